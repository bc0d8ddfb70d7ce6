package security_test

import (
	"context"
	"os"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/v3ctl/v3ctl/internal/security"
	"github.com/v3ctl/v3ctl/internal/testdb"
)

func setup(t *testing.T) (*pgxpool.Pool, *security.Rules) {
	t.Helper()
	rules, err := security.Load()
	if err != nil {
		t.Fatal(err)
	}
	pool := testdb.New(t)
	if err := security.LoadFixtures(context.Background(), pool, rules); err != nil {
		t.Fatal(err)
	}
	return pool, rules
}

func run(t *testing.T, pool *pgxpool.Pool, rules *security.Rules) *security.Matrix {
	t.Helper()
	m, err := security.Run(context.Background(), pool, rules)
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// TestMatrix is the least-privilege proof: every table and function of the
// schema has a rule, and what each role can do — in the catalog and when it
// actually runs statements with PostgREST's JWT claims — is exactly the rule.
func TestMatrix(t *testing.T) {
	pool, rules := setup(t)
	m := run(t, pool, rules)
	if m.Tables == 0 || m.Functions == 0 || m.Probes == 0 {
		t.Fatalf("matrix covered %d tables, %d functions, %d probes", m.Tables, m.Functions, m.Probes)
	}
	if f := m.Failures(); len(f) > 0 {
		t.Errorf("%d of %d checks differ from internal/security/rules.yaml:\n%s", len(f), len(m.Cells), security.Format(f))
	}
	t.Logf("%d tables, %d functions, %d probes, %d checks", m.Tables, m.Functions, m.Probes, len(m.Cells))
	if testing.Verbose() || os.Getenv("V3CTL_MATRIX") != "" {
		t.Logf("observed access (S select, U update, D delete, I insert, X execute):\n%s", m.Grid())
		if os.Getenv("V3CTL_MATRIX") == "all" {
			t.Logf("\n%s", security.Format(m.Cells))
		}
	}
}

// The suite must fail when the schema is loosened. Each mutation is applied
// to a fresh database; the matrix must name it.
func TestMatrixCatchesLoosening(t *testing.T) {
	cases := []struct {
		name, sql string
		object    string
		check     string
		persona   string // when set, the failing cell must be this persona's
	}{
		{"grant select on audit_log", `GRANT SELECT ON public.audit_log TO authenticated`, "public.audit_log", "grants", ""},
		{"policy opens shell_files", `CREATE POLICY leak ON public.shell_files FOR SELECT TO authenticated USING (true)`, "public.shell_files", "select", ""},
		{"execute to anon", `GRANT EXECUTE ON FUNCTION public.set_system_config(text, jsonb, text, text) TO anon`, "public.set_system_config(text, jsonb, text, text)", "execute", ""},
		{"table without a rule", `CREATE TABLE public.unruled (id int PRIMARY KEY); ALTER TABLE public.unruled ENABLE ROW LEVEL SECURITY`, "public.unruled", "rule", ""},
		{"rls disabled", `ALTER TABLE public.system_configuration DISABLE ROW LEVEL SECURITY`, "public.system_configuration", "rls enabled", ""},
		{"definer without search_path", `ALTER FUNCTION public.get_system_config(text, jsonb) RESET search_path`, "public.get_system_config(text, jsonb)", "definer search_path", ""},
		{"public execute", `GRANT EXECUTE ON FUNCTION public.log_audit_event(text, text, text, jsonb, jsonb, text, text, uuid, text, uuid, text) TO PUBLIC`, "public.log_audit_event(", "grant execute", ""},
		{"update policy opens user_profiles", `CREATE POLICY leak ON public.user_profiles FOR UPDATE TO authenticated USING (true)`, "public.user_profiles", "update", "B"},
		// B may update one profile either way: only the row set tells them apart.
		{"update policy swaps the rows", `ALTER POLICY user_profiles_update ON public.user_profiles USING (account_owner_id <> (SELECT auth.uid())) WITH CHECK (true)`, "public.user_profiles", "update", "B"},
		{"delete policy opens profile_access_permissions", `CREATE POLICY leak ON public.profile_access_permissions FOR DELETE TO authenticated USING (true)`, "public.profile_access_permissions", "delete", "B"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			pool, rules := setup(t)
			if _, err := pool.Exec(context.Background(), tc.sql); err != nil {
				t.Fatal(err)
			}
			m := run(t, pool, rules)
			f := m.Failures()
			found := false
			for _, c := range f {
				if strings.HasPrefix(c.Object, tc.object) && c.Check == tc.check && (tc.persona == "" || c.Persona == tc.persona) {
					found = true
				}
			}
			if !found {
				t.Fatalf("matrix did not catch %q (want a failing %s/%s); failures:\n%s", tc.sql, tc.object, tc.check, security.Format(f))
			}
			t.Logf("caught:\n%s", security.Format(f))
		})
	}
}

func TestRulesParse(t *testing.T) {
	if _, err := security.Load(); err != nil {
		t.Fatal(err)
	}
	if _, err := security.Parse([]byte("sections:\n- migration: 1\n  functions:\n    public.f: {execute: [nobody]}\n")); err == nil {
		t.Fatal("unknown role accepted")
	}
	if _, err := security.Parse([]byte("sections:\n- migration: 1\n  tables:\n    public.t: {anon: sometimes}\n")); err == nil {
		t.Fatal("unknown access accepted")
	}
	if _, err := security.Parse([]byte("sections:\n- migration: 1\n  tables:\n    public.t: {anon: none}\n- migration: 2\n  tables:\n    public.t: {anon: none}\n")); err == nil {
		t.Fatal("duplicate rule accepted")
	}
}

func TestExpand(t *testing.T) {
	p, _ := security.PersonaByName("A")
	got := security.Expand("x = :uid AND y::uuid = :b_self AND z IN :own_profiles AND w = ':unknown'", p)
	for _, want := range []string{"x = '" + security.AccountA + "'::uuid", "y::uuid = '" + security.ProfileBSelf, "account_owner_id = '" + security.AccountA, "':unknown'"} {
		if !strings.Contains(got, want) {
			t.Errorf("Expand: %q lacks %q", got, want)
		}
	}
	anon, _ := security.PersonaByName("anon")
	if got := security.Expand(":uid", anon); got != "NULL::uuid" {
		t.Errorf("anon uid = %q", got)
	}
}
