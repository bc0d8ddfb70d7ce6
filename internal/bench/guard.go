package bench

import (
	"context"
	"fmt"
	"strings"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/v3ctl/v3ctl/internal/devdb"
)

// ThrowawayInstances are the private devdb instances a benchmark may write
// to without --yes.
var ThrowawayInstances = []string{"dev", "bench", "test"}

// Throwaway decides whether dsn names a development or throwaway database
// that a benchmark may write to without asking: on this machine only, a
// database whose name starts with "v3ctl_" or "bench", or any database on a
// running private instance (v3ctl dev up, the bench and test instances:
// 127.0.0.1 on that instance's port). A remote database always needs --yes.
// It returns the reason either way.
func Throwaway(ctx context.Context, dsn string) (bool, string) {
	cfg, err := pgconn.ParseConfig(dsn)
	if err != nil {
		return false, "the database URL cannot be parsed"
	}
	name := cfg.Database
	local := cfg.Host == "127.0.0.1" || cfg.Host == "localhost" || cfg.Host == "::1" || strings.HasPrefix(cfg.Host, "/")
	if !local {
		return false, fmt.Sprintf("database %q is on %s, not on this machine", name, cfg.Host)
	}
	if strings.HasPrefix(name, "v3ctl_") || strings.HasPrefix(name, "bench") {
		return true, fmt.Sprintf("database %q on this machine is a throwaway name (v3ctl_*, bench*)", name)
	}
	{
		for _, inst := range ThrowawayInstances {
			st, err := devdb.Status(ctx, devdb.Options{Name: inst})
			if err == nil && st.Running && int(cfg.Port) == st.Port {
				return true, fmt.Sprintf("the private %q instance (127.0.0.1:%d)", inst, st.Port)
			}
		}
	}
	return false, fmt.Sprintf("database %q on %s:%d is not a dev or throwaway database", name, cfg.Host, cfg.Port)
}
