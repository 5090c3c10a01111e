// Command registry runs the distribution registry's own command with only
// the filesystem storage driver: the upstream command also links the Azure,
// GCS and S3 drivers (their SDKs triple the build), which a local registry
// never uses.
package main

import (
	"os"

	"github.com/distribution/distribution/v3/registry"
	_ "github.com/distribution/distribution/v3/registry/storage/driver/filesystem"
)

func main() {
	if err := registry.RootCmd.Execute(); err != nil {
		os.Exit(1)
	}
}
