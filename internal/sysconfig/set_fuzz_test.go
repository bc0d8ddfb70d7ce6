package sysconfig_test

import (
	"context"
	"errors"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/v3ctl/v3ctl/internal/testdb"
)

// cleanInputErrors are the SQLSTATEs set_system_config may raise for a
// value that is valid JSON: its own validation (22023) or a cast (22P02).
var cleanInputErrors = map[string]bool{"22023": true, "22P02": true}

// FuzzSetSystemConfig: set_system_config, called as the service role with
// any key and any value text, either refuses with a clean input error and
// writes nothing, or stores exactly that value and writes one audit row when
// (and only when) the value changed. As authenticated it is always refused.
// Run: go test ./internal/sysconfig -run '^$' -fuzz FuzzSetSystemConfig -fuzztime 30s
func FuzzSetSystemConfig(f *testing.F) {
	pool := testdb.New(f)
	ctx := context.Background()
	keys := []string{"worker.timeout_seconds", "worker.heartbeat_interval_seconds", "system.maintenance_mode",
		"features.billing_enabled", "audit.retention_days", "queue.backpressure_delay_seconds",
		"no.such_key", "", "features.", "WORKER.TIMEOUT_SECONDS"}
	for i, v := range []string{"900", "true", "false", "0", "-1", "86401", "1.5", "1e3", "\"900\"", "null", "{}", "[]",
		"", "nan", "1e400", "\"\\u0000\"", "\"x\"", "\xff", "   7   ", "9223372036854775808", "true false", "1800"} {
		f.Add(i%len(keys), v)
		f.Add((i+3)%len(keys), v)
	}
	snapshot := func(t *testing.T) (string, int64) {
		var s string
		var n int64
		if err := pool.QueryRow(ctx, `SELECT (SELECT string_agg(config_key || '=' || config_value::text, ';' ORDER BY config_key) FROM public.system_configuration),
			(SELECT count(*) FROM public.audit_log)`).Scan(&s, &n); err != nil {
			t.Fatal(err)
		}
		return s, n
	}
	call := func(role, key, value string) (changed bool, err error) {
		tx, err := pool.Begin(ctx)
		if err != nil {
			return false, err
		}
		defer tx.Rollback(ctx)
		if _, err := tx.Exec(ctx, `SELECT set_config('request.jwt.claims', $1, true)`, `{"role":"`+role+`"}`); err != nil {
			return false, err
		}
		if _, err := tx.Exec(ctx, `SET LOCAL ROLE `+pgx.Identifier{role}.Sanitize()); err != nil {
			return false, err
		}
		if err := tx.QueryRow(ctx, `SELECT (public.set_system_config($1, $2::jsonb, 'fuzz', 'fuzz') ->> 'changed')::boolean`, key, value).Scan(&changed); err != nil {
			return false, err
		}
		return changed, tx.Commit(ctx)
	}
	f.Fuzz(func(t *testing.T, keyN int, value string) {
		if keyN < 0 {
			keyN = -keyN
		}
		key := keys[keyN%len(keys)]
		// Text that is not JSON never reaches the function: PostgreSQL refuses
		// it as jsonb input with a data exception (class 22: 22P02 syntax,
		// 22P05 \u0000, 22021 bad UTF-8, 22003 number out of range).
		var norm string
		if err := pool.QueryRow(ctx, `SELECT $1::jsonb::text`, value).Scan(&norm); err != nil {
			var pg *pgconn.PgError
			if !errors.As(err, &pg) || pg.Code[:2] != "22" {
				t.Fatalf("%q as jsonb: want a data exception, got %v", value, err)
			}
			return
		}
		value = norm
		before, audits := snapshot(t)

		// As a browser: always refused, nothing written.
		if _, err := call("authenticated", key, value); err == nil {
			t.Fatalf("authenticated changed %s to %q", key, value)
		} else if pg := (*pgconn.PgError)(nil); !errors.As(err, &pg) || (pg.Code != "42501" && !cleanInputErrors[pg.Code]) {
			t.Fatalf("authenticated %s=%q: want 42501, got %v", key, value, err)
		}
		if after, n := snapshot(t); after != before || n != audits {
			t.Fatalf("refused call as authenticated wrote something")
		}

		changed, err := call("service_role", key, value)
		after, n := snapshot(t)
		if err != nil {
			var pg *pgconn.PgError
			if !errors.As(err, &pg) || !cleanInputErrors[pg.Code] {
				t.Fatalf("set %s=%q: want success or a clean input error (22023/22P02), got %v", key, value, err)
			}
			if after != before || n != audits {
				t.Fatalf("set %s=%q was refused (%s) but wrote something", key, value, pg.Code)
			}
			return
		}
		var stored bool
		if err := pool.QueryRow(ctx, `SELECT config_value = $2::jsonb FROM public.system_configuration WHERE config_key = $1`, key, value).Scan(&stored); err != nil {
			t.Fatal(err)
		}
		if !stored {
			t.Fatalf("set %s=%q succeeded but the stored value differs", key, value)
		}
		want := audits
		if changed {
			want++
		}
		if n != want {
			t.Fatalf("set %s=%q (changed=%v): %d audit rows written, want %d", key, value, changed, n-audits, want-audits)
		}
		if !changed && after != before {
			t.Fatalf("set %s=%q reported no change but the table changed", key, value)
		}
	})
}
