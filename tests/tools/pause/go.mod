// The node's sandbox ("pause") container: holds a pod's namespaces and does
// nothing else. Built here so that the node pulls no image from anywhere.
module attach.dev/tests/tools/pause

go 1.26.0
