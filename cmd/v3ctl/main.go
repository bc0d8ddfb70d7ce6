// Command v3ctl operates the V3 processing backend. See `v3ctl --help`.
package main

import (
	"os"

	"github.com/v3ctl/v3ctl/internal/cli"
)

func main() { os.Exit(cli.Main()) }
