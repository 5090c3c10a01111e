// The real Ollama server and CLI, built from the pinned module (see
// versions.env) with cgo, so that its generic CPU ggml backend is compiled
// in. The conformance tests put the gateway in front of it.
package main

import (
	"context"

	"github.com/spf13/cobra"

	"github.com/ollama/ollama/cmd"
)

func main() {
	cobra.CheckErr(cmd.NewCLI().ExecuteContext(context.Background()))
}
