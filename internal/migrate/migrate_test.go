package migrate_test

import (
	"context"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"

	"github.com/jackc/pgx/v5"

	"github.com/v3ctl/v3ctl/internal/devdb"
	"github.com/v3ctl/v3ctl/internal/migrate"
	"github.com/v3ctl/v3ctl/internal/testdb"
)

func open(t *testing.T, u string) *migrate.Migrator {
	t.Helper()
	m, err := migrate.Open(context.Background(), u, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.Close() })
	return m
}

func TestUpTwiceIsNoop(t *testing.T) {
	u := testdb.NewEmptyURL(t)
	ctx := context.Background()
	m := open(t, u)
	first, err := m.Up(ctx, 0)
	if err != nil {
		t.Fatal(err)
	}
	if len(first) == 0 {
		t.Fatal("first up applied nothing")
	}
	second, err := m.Up(ctx, 0)
	if err != nil {
		t.Fatal(err)
	}
	if len(second) != 0 {
		t.Fatalf("second up applied %d migrations", len(second))
	}
	pending, err := m.Pending(ctx)
	if err != nil || len(pending) != 0 {
		t.Fatalf("pending after up: %v %v", pending, err)
	}
	cur, latest, err := m.Version(ctx)
	if err != nil || cur != latest {
		t.Fatalf("version %d latest %d err %v", cur, latest, err)
	}
}

// Two migrators racing: exactly one applies each migration, both succeed.
func TestConcurrentUp(t *testing.T) {
	u := testdb.NewEmptyURL(t)
	ctx := context.Background()
	var wg sync.WaitGroup
	results := make([][]migrate.Result, 4)
	errs := make([]error, 4)
	for i := range results {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			m, err := migrate.Open(ctx, u, nil)
			if err != nil {
				errs[i] = err
				return
			}
			defer m.Close()
			results[i], errs[i] = m.Up(ctx, 0)
		}(i)
	}
	wg.Wait()
	total := 0
	for i := range results {
		if errs[i] != nil {
			t.Fatalf("runner %d: %v", i, errs[i])
		}
		total += len(results[i])
	}
	m := open(t, u)
	if int64(total) != int64(len(mustStatus(t, m))) {
		t.Fatalf("applied %d migrations in total across runners, want %d (each exactly once)", total, len(mustStatus(t, m)))
	}
}

func mustStatus(t *testing.T, m *migrate.Migrator) []migrate.Status {
	st, err := m.Status(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return st
}

func pgDump(t *testing.T, u string) string {
	t.Helper()
	bin, err := devdb.FindBinDir()
	if err != nil {
		t.Skip(err)
	}
	out, err := exec.Command(filepath.Join(bin, "pg_dump"), "--schema-only", "--no-owner", "--exclude-schema=v3ctl", u).CombinedOutput()
	if err != nil {
		t.Fatalf("pg_dump: %v\n%s", err, out)
	}
	// Drop comment lines that name the dump's own database.
	re := regexp.MustCompile(`(?m)^(--.*|\\(un)?restrict .*)$`)
	return re.ReplaceAllString(string(out), "")
}

// Down to zero and up again yields the same schema.
func TestDownUpRoundTrip(t *testing.T) {
	u := testdb.NewEmptyURL(t)
	ctx := context.Background()
	m := open(t, u)
	if _, err := m.Up(ctx, 0); err != nil {
		t.Fatal(err)
	}
	before := pgDump(t, u)
	down, err := m.Down(ctx, 0, true)
	if err != nil {
		t.Fatal(err)
	}
	if len(down) != len(mustStatus(t, m)) {
		t.Fatalf("down rolled back %d of %d", len(down), len(mustStatus(t, m)))
	}
	// Nothing of ours is left in public or auth.
	conn, err := pgx.Connect(ctx, u)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	var leftovers int
	if err := conn.QueryRow(ctx, `SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
		WHERE n.nspname IN ('public','auth')`).Scan(&leftovers); err != nil {
		t.Fatal(err)
	}
	if leftovers != 0 {
		t.Fatalf("%d relations left after down to zero", leftovers)
	}
	if _, err := m.Up(ctx, 0); err != nil {
		t.Fatal(err)
	}
	after := pgDump(t, u)
	if before != after {
		t.Fatalf("schema differs after down/up:\n%s", diff(before, after))
	}
}

// A database that already has Supabase's auth schema keeps it: up uses it,
// down leaves it in place.
func TestSupabaseAuthPreserved(t *testing.T) {
	u := testdb.NewEmptyURL(t)
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, u)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	_, err = conn.Exec(ctx, `
		CREATE SCHEMA auth;
		CREATE TABLE auth.users (id uuid PRIMARY KEY, email text, aud text, instance_id uuid);
		CREATE FUNCTION auth.uid() RETURNS uuid LANGUAGE sql STABLE AS $$
		  SELECT nullif(current_setting('request.jwt.claim.sub', true), '')::uuid $$;
		COMMENT ON FUNCTION auth.uid() IS 'supabase';
		CREATE FUNCTION auth.role() RETURNS text LANGUAGE sql STABLE AS $$ SELECT 'x'::text $$;
		CREATE FUNCTION auth.jwt() RETURNS jsonb LANGUAGE sql STABLE AS $$ SELECT '{}'::jsonb $$;`)
	if err != nil {
		t.Fatal(err)
	}
	m := open(t, u)
	if _, err := m.Up(ctx, 0); err != nil {
		t.Fatal(err)
	}
	var comment *string
	if err := conn.QueryRow(ctx, `SELECT obj_description('auth.uid()'::regprocedure, 'pg_proc')`).Scan(&comment); err != nil {
		t.Fatal(err)
	}
	if comment == nil || *comment != "supabase" {
		t.Fatalf("auth.uid() was replaced: comment %v", comment)
	}
	var hasAud bool
	if err := conn.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM information_schema.columns WHERE table_schema='auth' AND table_name='users' AND column_name='aud')`).Scan(&hasAud); err != nil || !hasAud {
		t.Fatalf("auth.users was replaced: %v", err)
	}
	if _, err := m.Down(ctx, 0, true); err != nil {
		t.Fatal(err)
	}
	var n int
	if err := conn.QueryRow(ctx, `SELECT count(*) FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace WHERE n.nspname='auth'`).Scan(&n); err != nil {
		t.Fatal(err)
	}
	if n != 3 {
		t.Fatalf("down removed Supabase's auth functions: %d left", n)
	}
	if err := conn.QueryRow(ctx, `SELECT count(*) FROM auth.users`).Scan(&n); err != nil {
		t.Fatalf("down removed Supabase's auth.users: %v", err)
	}
}

func TestSQLForDryRun(t *testing.T) {
	sql, err := migrate.SQLFor(migrate.FS(), []int64{1}, "up")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(sql, "CREATE TABLE public.user_profiles") || strings.Contains(sql, "DROP TABLE IF EXISTS public.user_profiles") {
		t.Fatalf("up SQL of version 1 is wrong:\n%.500s", sql)
	}
	down, err := migrate.SQLFor(migrate.FS(), []int64{1}, "down")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(down, "DROP TABLE IF EXISTS public.user_profiles") {
		t.Fatal("down SQL of version 1 lacks its drops")
	}
}

func diff(a, b string) string {
	al, bl := strings.Split(a, "\n"), strings.Split(b, "\n")
	var out []string
	for i := 0; i < len(al) || i < len(bl); i++ {
		var x, y string
		if i < len(al) {
			x = al[i]
		}
		if i < len(bl) {
			y = bl[i]
		}
		if x != y {
			out = append(out, "- "+x, "+ "+y)
			if len(out) > 20 {
				break
			}
		}
	}
	return strings.Join(out, "\n")
}
