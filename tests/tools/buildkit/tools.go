//go:build tools

// Package tools pins the BuildKit commands this module builds, so that
// `go mod tidy` keeps their dependencies.
package tools

import (
	_ "github.com/moby/buildkit/cmd/buildctl"
	_ "github.com/moby/buildkit/cmd/buildkitd"
)
