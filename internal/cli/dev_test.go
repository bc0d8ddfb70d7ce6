package cli

import (
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/v3ctl/v3ctl/internal/devdb"
	"github.com/v3ctl/v3ctl/internal/testdb"
)

func TestDevSeed(t *testing.T) {
	t.Parallel()
	u := testdb.NewURL(t)
	pool := testdb.Pool(t, u)
	ctx := context.Background()
	count := func(sql string) int {
		t.Helper()
		var n int
		if err := pool.QueryRow(ctx, sql).Scan(&n); err != nil {
			t.Fatalf("%s: %v", sql, err)
		}
		return n
	}

	// Dry run: reports the accounts and jobs, changes nothing.
	code, out, errs := run(t, "--database-url", u, "dev", "seed", "--jobs", "--dry-run", "-o", "json")
	var res seedResult
	if code != 0 || json.Unmarshal([]byte(out), &res) != nil || !res.DryRun || len(res.Accounts) != 3 || len(res.Jobs) != 9 {
		t.Fatalf("dry run: exit %d %s %s", code, out, errs)
	}
	if n := count(`SELECT count(*) FROM auth.users`) + count(`SELECT count(*) FROM public.job_queue`); n != 0 {
		t.Fatalf("dry run wrote %d rows", n)
	}

	for i := 0; i < 2; i++ { // the second run adds a new batch of jobs, nothing else
		code, out, errs = run(t, "--database-url", u, "dev", "seed", "--jobs", "-o", "json")
		res = seedResult{}
		if code != 0 || json.Unmarshal([]byte(out), &res) != nil {
			t.Fatalf("seed %d: exit %d %s %s", i+1, code, out, errs)
		}
	}
	want := map[string]string{"alice@example.test": "premium", "bob@example.test": "basic", "carol@example.test": "free"}
	for _, a := range res.Accounts {
		if want[a.Email] != a.Plan {
			t.Errorf("%s: plan %s", a.Email, a.Plan)
		}
	}
	if a := res.Accounts[0]; a.Email != "alice@example.test" || len(a.Profiles) != 2 || a.Documents != 3 || len(a.Shares) != 1 {
		t.Fatalf("alice: %+v", a)
	}
	for sql, n := range map[string]int{
		`SELECT count(*) FROM auth.users`:                                                   3,
		`SELECT count(*) FROM public.user_profiles`:                                         4,
		`SELECT count(*) FROM public.profile_access_permissions`:                            1,
		`SELECT count(*) FROM public.shell_files`:                                           6,
		`SELECT count(*) FROM public.account_plans`:                                         2,
		`SELECT count(*) FROM public.account_plan_history`:                                  2,
		`SELECT count(*) FROM public.usage_events WHERE event_type = 'shell_file_uploaded'`: 6,
		`SELECT coalesce(sum(pages), 0)::int FROM public.usage_events`:                      8,
		`SELECT count(*) FROM public.job_queue`:                                             18,
		`SELECT count(DISTINCT correlation_id) FROM public.job_queue`:                       2,
		`SELECT count(*) FROM public.job_queue WHERE job_payload ? 'simulate'`:              4,
	} {
		if got := count(sql); got != n {
			t.Errorf("%s = %d, want %d", sql, got, n)
		}
	}
	if code, _, errs := run(t, "--database-url", u, "usage", "verify"); code != 0 {
		t.Fatalf("usage verify after seeding twice: exit %d %s", code, errs)
	}

	// The seeded shell files describe the bundled sample documents.
	rows, err := pool.Query(ctx, `SELECT id::text, patient_id::text, storage_path, page_count, file_size_bytes FROM public.shell_files ORDER BY id`)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	i := 0
	for rows.Next() {
		var id, patient, path string
		var pages int
		var size int64
		if err := rows.Scan(&id, &patient, &path, &pages, &size); err != nil {
			t.Fatal(err)
		}
		f := devdb.SeedFiles[i]
		i++
		if f.ID != id || f.PatientID != patient || f.StoragePath != path || f.Pages != pages {
			t.Errorf("shell file %s (%s): seed.sql and devdb.SeedFiles disagree", id, path)
		}
		body, err := os.ReadFile(filepath.Join("..", "..", "examples", "documents", path))
		if err != nil {
			t.Errorf("shell file %s: %v", id, err)
			continue
		}
		if int64(len(body)) != size || strings.Count(strings.TrimRight(string(body), "\f"), "\f")+1 != pages {
			t.Errorf("%s: seeded as %d bytes / %d pages; the file has %d bytes", path, size, pages, len(body))
		}
	}
	if i != len(devdb.SeedFiles) {
		t.Fatalf("%d shell files, devdb.SeedFiles has %d", i, len(devdb.SeedFiles))
	}
}

func TestDevSeedRefusesOtherDatabases(t *testing.T) {
	t.Parallel()
	// Refused before connecting: the host does not need to exist.
	code, _, errs := run(t, "--database-url", "postgres://app@db.example.invalid:5432/production", "dev", "seed")
	if code != ExitUsage || !strings.Contains(errs, "refusing to seed") || !strings.Contains(errs, "--yes") {
		t.Fatalf("exit %d stderr %s", code, errs)
	}
	// A named dev instance that is not running.
	code, _, errs = run(t, "dev", "seed", "--name", "no_such_instance_for_seed")
	if code != ExitUnavailable || !strings.Contains(errs, "not running") {
		t.Fatalf("--name of a stopped instance: exit %d stderr %s", code, errs)
	}
}

// TestDemoBatchRunsToCompletion is what `make demo` does: seed a batch, run
// a worker with the example exec handler until the queue is drained, and
// find every job finished as the demo describes it.
func TestDemoBatchRunsToCompletion(t *testing.T) {
	t.Parallel()
	u := testdb.NewURL(t)
	pool := testdb.Pool(t, u)
	ctx := context.Background()
	dir := t.TempDir()
	handler := filepath.Join(dir, "extract-text")
	if out, err := exec.Command("go", "build", "-o", handler, "../../examples/extract-text").CombinedOutput(); err != nil {
		t.Fatalf("building the example handler: %v\n%s", err, out)
	}
	docs, err := filepath.Abs("../../examples/documents")
	if err != nil {
		t.Fatal(err)
	}
	cfg := filepath.Join(dir, "config.yaml")
	// The env name keeps its case (viper would lower-case it).
	spec := `{kind: exec, command: ["` + handler + `"], timeout: 30s, env: {V3_DOCUMENT_ROOT: "` + docs + `"}}`
	if err := os.WriteFile(cfg, []byte("worker:\n  handlers:\n    shell_file_processing: "+spec+"\n    ai_processing: "+spec+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if code, _, errs := runCfg(t, cfg, "--database-url", u, "settings", "set", "queue.retry_base_delay_seconds", "1"); code != 0 {
		t.Fatalf("settings set: %d %s", code, errs)
	}
	if code, _, errs := runCfg(t, cfg, "--database-url", u, "dev", "seed", "--jobs"); code != 0 {
		t.Fatalf("seed: %d %s", code, errs)
	}
	if code, _, errs := runCfg(t, cfg, "--database-url", u, "worker", "run", "--exit-when-idle", "-1s"); code != ExitUsage || !strings.Contains(errs, "exit-when-idle") {
		t.Fatalf("negative --exit-when-idle: exit %d %s", code, errs)
	}
	code, _, errs := runCfg(t, cfg, "--database-url", u, "worker", "run", "--exit-when-idle", "2s", "--poll-interval", "100ms")
	if code != 0 || !strings.Contains(errs, "queue drained") {
		t.Fatalf("worker run: exit %d\n%s", code, errs)
	}
	got := map[string]string{}
	rows, err := pool.Query(ctx, `SELECT job_name, status || '/' || retry_count FROM public.job_queue_all`)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	for rows.Next() {
		var name, st string
		if err := rows.Scan(&name, &st); err != nil {
			t.Fatal(err)
		}
		got[name] = st
	}
	for _, j := range devdb.SeedJobs("x") {
		want := "completed/0"
		switch {
		case strings.Contains(j.Name, "imaging-report"):
			want = "completed/1"
		case strings.Contains(j.Name, "referral-letter"):
			want = "dead_letter/1"
		}
		if got[j.Name] != want {
			t.Errorf("%s: %s, want %s", j.Name, got[j.Name], want)
		}
	}
	var summary string
	if err := pool.QueryRow(ctx, `SELECT job_result->>'summary' FROM public.job_queue_all WHERE job_type = 'ai_processing' LIMIT 1`).Scan(&summary); err != nil || !strings.Contains(summary, "no model was called") {
		t.Fatalf("ai_processing result: %q %v", summary, err)
	}
	// The stand-in summaries report token usage, which the worker meters.
	var aiJobs, tokens int
	if err := pool.QueryRow(ctx, `SELECT count(*), coalesce(sum(tokens), 0) FROM public.usage_events
		WHERE event_type = 'ai_processing_completed'`).Scan(&aiJobs, &tokens); err != nil || aiJobs != 2 || tokens <= 0 {
		t.Fatalf("AI usage: %d jobs, %d tokens, %v", aiJobs, tokens, err)
	}
}
