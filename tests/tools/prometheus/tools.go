//go:build tools

// Package tools pins the Prometheus commands this module builds, so that
// `go mod tidy` keeps their dependencies: the server (scraping and alert
// rules in the end-to-end tests) and promtool (alert-rule unit tests).
package tools

import (
	_ "github.com/prometheus/prometheus/cmd/prometheus"
	_ "github.com/prometheus/prometheus/cmd/promtool"
)
