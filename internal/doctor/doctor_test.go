package doctor_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/v3ctl/v3ctl/internal/doctor"
	"github.com/v3ctl/v3ctl/internal/testdb"
)

func findings(t *testing.T, pool *pgxpool.Pool, o doctor.Options) []doctor.Finding {
	t.Helper()
	return doctor.Run(context.Background(), pool, o)
}

func dump(fs []doctor.Finding) string {
	var b strings.Builder
	for _, f := range fs {
		b.WriteString(string(f.Severity) + "\t" + f.Check + "\t" + f.Message + "\n")
	}
	return b.String()
}

// A freshly migrated database is clean: every check is ok (or skipped).
func TestCleanOnFreshDatabase(t *testing.T) {
	pool := testdb.New(t)
	fs := findings(t, pool, doctor.Options{URL: "postgres://u@127.0.0.1:5432/db"})
	if w := doctor.Worst(fs); w != doctor.OK {
		t.Fatalf("fresh database is not clean (worst %s):\n%s", w, dump(fs))
	}
	seen := map[string]bool{}
	for _, f := range fs {
		seen[f.Check] = true
	}
	for _, name := range doctor.CheckNames() {
		if !seen[name] {
			t.Errorf("check %s reported nothing", name)
		}
	}
	t.Logf("\n%s", dump(fs))
}

// Each planted problem is found by its check, with the expected severity.
func TestFindsPlantedProblems(t *testing.T) {
	cases := []struct {
		name  string
		plant []string
		opts  doctor.Options
		check string
		sev   doctor.Severity
		want  string // substring of the message
	}{
		{name: "schema behind the binary", plant: []string{`DELETE FROM v3ctl.schema_migrations WHERE version_id = (SELECT max(version_id) FROM v3ctl.schema_migrations)`},
			check: "pending_migrations", sev: doctor.Warn, want: "pending"},
		{name: "schema ahead of the binary", plant: []string{`INSERT INTO v3ctl.schema_migrations (version_id, is_applied) VALUES (99999, true)`},
			check: "schema_version", sev: doctor.Warn, want: "newer than this binary"},
		{name: "no schema", plant: []string{`DROP TABLE v3ctl.schema_migrations`},
			check: "schema_version", sev: doctor.Critical, want: "no V3 schema"},
		{name: "rls disabled", plant: []string{`ALTER TABLE public.audit_log DISABLE ROW LEVEL SECURITY`},
			check: "rls_disabled", sev: doctor.Critical, want: "public.audit_log"},
		{name: "table grant beyond the rules", plant: []string{`GRANT SELECT ON public.audit_log TO authenticated`},
			check: "table_privileges", sev: doctor.Critical, want: "authenticated holds SELECT on public.audit_log"},
		{name: "truncate to authenticated", plant: []string{`GRANT TRUNCATE ON public.shell_files TO authenticated`},
			check: "table_privileges", sev: doctor.Critical, want: "TRUNCATE"},
		{name: "definer without search_path", plant: []string{`CREATE FUNCTION public.planted_definer() RETURNS int LANGUAGE sql SECURITY DEFINER AS 'SELECT 1'`,
			`REVOKE EXECUTE ON FUNCTION public.planted_definer() FROM PUBLIC`},
			check: "definer_search_path", sev: doctor.Critical, want: "public.planted_definer()"},
		{name: "definer with a mutable search_path", plant: []string{`ALTER FUNCTION public.get_system_config(text, jsonb) SET search_path = public`},
			check: "definer_search_path", sev: doctor.Warn, want: "search_path=public"},
		{name: "function executable by authenticated", plant: []string{`GRANT EXECUTE ON FUNCTION public.set_system_config(text, jsonb, text, text) TO authenticated`},
			check: "function_privileges", sev: doctor.Critical, want: "set_system_config"},
		{name: "unknown definer executable by anon", plant: []string{`CREATE FUNCTION public.planted_open() RETURNS int LANGUAGE sql SECURITY DEFINER SET search_path = '' AS 'SELECT 1'`},
			check: "function_privileges", sev: doctor.Critical, want: "public.planted_open() (not a V3 function) is executable by anon and authenticated"},
		{name: "policy calling auth.uid per row", plant: []string{`CREATE POLICY planted ON public.shell_files FOR SELECT TO authenticated USING (uploaded_by = auth.uid())`},
			check: "policy_per_row_auth", sev: doctor.Warn, want: "planted"},
		{name: "policy column without index", plant: []string{`DROP INDEX public.shell_files_patient_id_idx`},
			check: "policy_indexes", sev: doctor.Warn, want: "public.shell_files.patient_id"},
		{name: "transaction-mode pooler", opts: doctor.Options{URL: "postgres://postgres.abc:pw@aws-0-eu-central-1.pooler.supabase.com:6543/postgres"},
			check: "pooler_url", sev: doctor.Warn, want: "transaction-mode"},
		{name: "pgbouncer=true", opts: doctor.Options{URL: "postgres://u:p@db.example.com:5432/postgres?pgbouncer=true"},
			check: "pooler_url", sev: doctor.Warn, want: "pgbouncer=true"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			pool := testdb.New(t)
			for _, s := range tc.plant {
				if _, err := pool.Exec(context.Background(), s); err != nil {
					t.Fatalf("plant %q: %v", s, err)
				}
			}
			o := tc.opts
			o.Only = []string{tc.check}
			fs := findings(t, pool, o)
			for _, f := range fs {
				if f.Check == tc.check && f.Severity == tc.sev && strings.Contains(f.Message, tc.want) {
					return
				}
			}
			t.Fatalf("check %s did not report %s %q:\n%s", tc.check, tc.sev, tc.want, dump(fs))
		})
	}
}

// An open transaction older than the threshold is reported.
func TestFindsOldOpenTransaction(t *testing.T) {
	pool := testdb.New(t)
	ctx := context.Background()
	tx, err := pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback(ctx)
	if _, err := tx.Exec(ctx, `SELECT pg_catalog.txid_current()`); err != nil {
		t.Fatal(err)
	}
	// xact_start is now() of that transaction: wait until it is measurably old.
	var age float64
	for age < 0.05 {
		if err := pool.QueryRow(ctx, `SELECT coalesce(max(extract(epoch FROM now() - xact_start)), 0)::float8 FROM pg_stat_activity
			WHERE datname = current_database() AND pid <> pg_backend_pid() AND xact_start IS NOT NULL`).Scan(&age); err != nil {
			t.Fatal(err)
		}
		time.Sleep(20 * time.Millisecond)
	}
	fs := findings(t, pool, doctor.Options{Only: []string{"open_transactions"}, OpenTxWarn: 10 * time.Millisecond, OpenTxCritical: time.Hour})
	if doctor.Worst(fs) != doctor.Warn || !strings.Contains(fs[0].Message, "oldest open transaction") {
		t.Fatalf("open transaction not reported:\n%s", dump(fs))
	}
	fs = findings(t, pool, doctor.Options{Only: []string{"open_transactions"}, OpenTxWarn: 10 * time.Millisecond, OpenTxCritical: 20 * time.Millisecond})
	if doctor.Worst(fs) != doctor.Critical {
		t.Fatalf("open transaction past the critical age not critical:\n%s", dump(fs))
	}
}

func TestPoolerMode(t *testing.T) {
	for dsn, want := range map[string]bool{
		"postgres://u:p@db.abc.supabase.co:5432/postgres":                           false,
		"postgres://u:p@aws-0-us-east-1.pooler.supabase.com:5432/postgres":          false,
		"postgres://u:p@aws-0-us-east-1.pooler.supabase.com:6543/postgres":          true,
		"postgresql://u@localhost:6543/db":                                          true,
		"postgres://u@localhost/db?pgbouncer=true":                                  true,
		"host=aws-0-us-east-1.pooler.supabase.com port=6543 user=u dbname=postgres": true,
		"host=localhost port=5432 dbname=v3":                                        false,
		"":                                                                          false,
	} {
		if got, _ := doctor.PoolerMode(dsn); got != want {
			t.Errorf("PoolerMode(%q) = %v, want %v", dsn, got, want)
		}
	}
}
