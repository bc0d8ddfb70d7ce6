package cli

import (
	"encoding/json"
	"fmt"
	"io/fs"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/v3ctl/v3ctl/migrations"
)

// addDryRun adds the standard --dry-run flag.
func addDryRun(cmd *cobra.Command, p *bool) {
	cmd.Flags().BoolVar(p, "dry-run", false, "show what would change without changing anything")
}

// fmtTime prints a timestamp in UTC, or "-" for nil/zero.
func fmtTime(t *time.Time) string {
	if t == nil || t.IsZero() {
		return "-"
	}
	return t.UTC().Format("2006-01-02 15:04:05Z")
}

// fmtAgo prints a duration since t, compactly ("3m12s ago").
func fmtAgo(t time.Time) string {
	if t.IsZero() {
		return "-"
	}
	d := time.Since(t).Round(time.Second)
	if d < 0 {
		return "in " + (-d).String()
	}
	return d.String() + " ago"
}

// rawString renders a JSON value for a table cell (strings unquoted).
func rawString(b json.RawMessage) string {
	if len(b) == 0 {
		return "-"
	}
	var s string
	if json.Unmarshal(b, &s) == nil {
		return s
	}
	return string(b)
}

func strPtr(s *string) string {
	if s == nil {
		return "-"
	}
	return *s
}

// oneOf validates a flag value against a list, naming the valid choices.
func oneOf(flag, value string, valid []string) error {
	for _, v := range valid {
		if v == value {
			return nil
		}
	}
	return UsageErrorf("invalid --%s %q: valid values are %s", flag, value, strings.Join(valid, ", "))
}

func latestSchemaVersion() int64 {
	files, _ := fs.Glob(migrations.FS, "*.sql")
	var v int64
	for _, f := range files {
		var n int64
		if _, err := fmt.Sscanf(f, "%d_", &n); err == nil && n > v {
			v = n
		}
	}
	return v
}
