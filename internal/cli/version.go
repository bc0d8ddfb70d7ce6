package cli

import (
	"fmt"
	"runtime"
	"runtime/debug"

	"github.com/spf13/cobra"
)

// Set through -ldflags "-X github.com/v3ctl/v3ctl/internal/cli.version=..." by goreleaser and make.
var (
	version = "dev"
	commit  = ""
	date    = ""
)

// VersionInfo describes the binary.
type VersionInfo struct {
	Version   string `json:"version" yaml:"version"`
	Commit    string `json:"commit" yaml:"commit"`
	Date      string `json:"date" yaml:"date"`
	GoVersion string `json:"go_version" yaml:"go_version"`
	Platform  string `json:"platform" yaml:"platform"`
	Schema    int64  `json:"schema_version" yaml:"schema_version"`
}

// Version returns the build's version information.
func Version() VersionInfo {
	v := VersionInfo{Version: version, Commit: commit, Date: date, GoVersion: runtime.Version(),
		Platform: runtime.GOOS + "/" + runtime.GOARCH, Schema: latestSchemaVersion()}
	if v.Commit == "" {
		if bi, ok := debug.ReadBuildInfo(); ok {
			for _, s := range bi.Settings {
				switch s.Key {
				case "vcs.revision":
					v.Commit = s.Value
				case "vcs.time":
					if v.Date == "" {
						v.Date = s.Value
					}
				}
			}
		}
	}
	return v
}

func init() {
	Register(func(a *App) *cobra.Command {
		return &cobra.Command{
			Use:   "version",
			Short: "Print the version, commit, build date and the schema version this binary carries",
			Args:  cobra.NoArgs,
			RunE: func(cmd *cobra.Command, _ []string) error {
				v := Version()
				p := a.Printer()
				if p.Structured() {
					return p.Print(v, nil, nil)
				}
				fmt.Fprintf(a.Out, "v3ctl %s (commit %s, built %s, %s, %s; schema version %d)\n",
					v.Version, orNone(v.Commit), orNone(v.Date), v.GoVersion, v.Platform, v.Schema)
				return nil
			},
		}
	})
}

func orNone(s string) string {
	if s == "" {
		return "unknown"
	}
	return s
}
