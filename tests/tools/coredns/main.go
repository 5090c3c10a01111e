// Command coredns runs CoreDNS's own main with the plugins the test node's
// Corefile uses (bind, errors, ready, kubernetes, cache, template). The
// upstream command links every plugin, including the Route 53, Azure and
// Cloud DNS ones whose SDKs dominate the build; CoreDNS documents
// compiling in a chosen set as its way to trim it.
package main

import (
	"github.com/coredns/coredns/coremain"
	_ "github.com/coredns/coredns/plugin/bind"
	_ "github.com/coredns/coredns/plugin/cache"
	_ "github.com/coredns/coredns/plugin/errors"
	_ "github.com/coredns/coredns/plugin/kubernetes"
	_ "github.com/coredns/coredns/plugin/ready"
	_ "github.com/coredns/coredns/plugin/template"
)

func main() { coremain.Run() }
