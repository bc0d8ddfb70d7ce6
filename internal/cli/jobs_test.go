package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/v3ctl/v3ctl/internal/queue"
	"github.com/v3ctl/v3ctl/internal/testdb"
)

func TestParseAge(t *testing.T) {
	good := map[string]time.Duration{
		"7d": 7 * 24 * time.Hour, "12h": 12 * time.Hour, "30m": 30 * time.Minute, "90s": 90 * time.Second,
		"2w": 14 * 24 * time.Hour, "1d12h": 36 * time.Hour, "1h30m": 90 * time.Minute, "0": 0,
		" 7D ": 7 * 24 * time.Hour, "1.5h": 90 * time.Minute, "250ms": 250 * time.Millisecond,
	}
	for in, want := range good {
		got, err := parseAge(in)
		if err != nil || got != want {
			t.Errorf("parseAge(%q) = %v, %v; want %v", in, got, err, want)
		}
	}
	for _, in := range []string{"", "7", "-7d", "7x", "d", "7d3", "1y", "abc", "99999999w"} {
		if got, err := parseAge(in); err == nil {
			t.Errorf("parseAge(%q) = %v, want an error", in, got)
		}
	}
}

type cliResult struct {
	code     int
	out, err string
}

func run(t *testing.T, url, stdin string, args ...string) cliResult {
	t.Helper()
	var out, errb bytes.Buffer
	t.Setenv("V3CTL_CONFIG", filepath.Join(t.TempDir(), "config.yaml"))
	a := NewApp(strings.NewReader(stdin), &out, &errb)
	code := Execute(context.Background(), a, append([]string{"--database-url", url, "--actor", "tester"}, args...))
	return cliResult{code, out.String(), errb.String()}
}

func TestJobsCLI(t *testing.T) {
	u := testdb.NewURL(t)
	pool := testdb.Pool(t, u)
	ctx := context.Background()

	// enqueue: inline, stdin, @file; bad input exits 2 and writes nothing.
	r := run(t, u, "", "jobs", "enqueue", "--type", "ai_processing", "--lane", "ai_queue_complex",
		"--payload", `{"shell_file_id":"00000000-0000-0000-0000-000000000001"}`, "--priority", "2", "--correlation-id", "c-1")
	if r.code != 0 {
		t.Fatalf("enqueue: %+v", r)
	}
	id := strings.TrimSpace(r.out)
	if err := checkUUID("id", id); err != nil {
		t.Fatalf("enqueue printed %q", r.out)
	}
	r = run(t, u, `{"report":"monthly"}`, "jobs", "enqueue", "--type", "report_generation", "--payload", "-", "--delay", "1h", "-o", "json")
	var enq struct {
		JobID       string    `json:"job_id"`
		ScheduledAt time.Time `json:"scheduled_at"`
	}
	if r.code != 0 || json.Unmarshal([]byte(r.out), &enq) != nil || time.Until(enq.ScheduledAt) < 50*time.Minute {
		t.Fatalf("enqueue from stdin: %+v", r)
	}
	f := filepath.Join(t.TempDir(), "p.json")
	if err := os.WriteFile(f, []byte(`{"scope":"all"}`), 0o600); err != nil {
		t.Fatal(err)
	}
	if r = run(t, u, "", "jobs", "enqueue", "--type", "audit_cleanup", "--payload", "@"+f, "--dry-run"); r.code != 0 || !strings.Contains(r.err, "dry run") {
		t.Fatalf("dry-run enqueue: %+v", r)
	}
	for _, bad := range [][]string{
		{"--type", "mining", "--payload", `{"a":1}`},
		{"--type", "ai_processing", "--lane", "fast_queue", "--payload", `{"a":1}`},
		{"--type", "audit_cleanup", "--payload", `[]`},
		{"--type", "audit_cleanup", "--payload", `{}`},
		{"--type", "audit_cleanup", "--payload", `{"a":1}`, "--priority", "0"},
		{"--type", "audit_cleanup", "--payload", `{"a":1}`, "--delay", "soon"},
		{"--type", "ai_processing", "--payload", `{"patient_id":"nope"}`}, // refused by SQL -> exit 2
	} {
		r = run(t, u, "", append([]string{"jobs", "enqueue"}, bad...)...)
		if r.code != ExitUsage || r.err == "" {
			t.Errorf("enqueue %v: exit %d (%s), want 2", bad, r.code, r.err)
		}
	}
	var n int
	if err := pool.QueryRow(ctx, `SELECT count(*) FROM job_queue`).Scan(&n); err != nil || n != 2 {
		t.Fatalf("jobs after enqueues: %d %v", n, err)
	}

	// list / show: no payload unless asked.
	r = run(t, u, "", "jobs", "list", "-o", "json")
	var list []queue.Summary
	if r.code != 0 || json.Unmarshal([]byte(r.out), &list) != nil || len(list) != 2 {
		t.Fatalf("list: %+v", r)
	}
	if strings.Contains(r.out, "job_payload") {
		t.Fatal("list printed a payload")
	}
	r = run(t, u, "", "jobs", "list", "--status", "bogus")
	if r.code != ExitUsage || !strings.Contains(r.err, "pending") {
		t.Fatalf("list bad status: %+v", r)
	}
	r = run(t, u, "", "jobs", "show", id)
	if r.code != 0 || !strings.Contains(r.out, "ENQUEUE") || strings.Contains(r.out, "payload:") {
		t.Fatalf("show: %+v", r)
	}
	r = run(t, u, "", "jobs", "show", id, "--payload", "-o", "json")
	if r.code != 0 || !strings.Contains(r.out, `"job_payload"`) {
		t.Fatalf("show --payload: %+v", r)
	}
	if r = run(t, u, "", "jobs", "show", "00000000-0000-0000-0000-0000000000ff"); r.code != ExitNotFound {
		t.Fatalf("show unknown: %+v", r)
	}

	// A worker dies holding the job; reclaim (as from cron) brings it back.
	j, err := queue.Claim(ctx, pool, "w1", nil, nil, 1)
	if err != nil || len(j) != 1 || j[0].ID != id {
		t.Fatalf("claim %v %v", j, err)
	}
	if _, err := pool.Exec(ctx, `UPDATE job_queue SET heartbeat_at = now() - interval '1 day' WHERE id = $1`, id); err != nil {
		t.Fatal(err)
	}
	r = run(t, u, "", "jobs", "stats", "-o", "json")
	var st queue.Stats
	if r.code != 0 || json.Unmarshal([]byte(r.out), &st) != nil || st.Stuck != 1 || st.Processing != 1 || st.Pending != 1 {
		t.Fatalf("stats: %+v %+v", r, st)
	}
	r = run(t, u, "", "jobs", "reclaim", "--dry-run")
	if r.code != 0 || !strings.Contains(r.out, "would have reclaimed 1 job(s)") {
		t.Fatalf("reclaim dry-run: %+v", r)
	}
	r = run(t, u, "", "jobs", "reclaim")
	if r.code != 0 || !strings.Contains(r.out, "reclaimed 1 job(s), 0 dead-lettered") || strings.Count(r.out, "\n") != 1 {
		t.Fatalf("reclaim: %+v", r)
	}
	r = run(t, u, "", "jobs", "reclaim", "-o", "json")
	if r.code != 0 || !strings.Contains(r.out, `"reclaimed": 0`) {
		t.Fatalf("second reclaim: %+v", r)
	}

	// cancel needs --yes without a terminal; then retry from dead letter.
	if r = run(t, u, "", "jobs", "cancel", id); r.code != ExitUsage {
		t.Fatalf("cancel without --yes: %+v", r)
	}
	if r = run(t, u, "", "jobs", "cancel", id, "--yes", "--reason", "test"); r.code != 0 || !strings.Contains(r.out, "cancelled") {
		t.Fatalf("cancel: %+v", r)
	}
	if r = run(t, u, "", "jobs", "cancel", id, "--yes"); r.code != ExitError || !strings.Contains(r.out, "already cancelled") {
		t.Fatalf("cancel again: %+v", r)
	}
	if _, err := pool.Exec(ctx, `UPDATE job_queue_archive SET status = 'dead_letter', dead_letter_at = now() WHERE id = $1`, id); err != nil {
		t.Fatal(err)
	}
	if r = run(t, u, "", "jobs", "retry"); r.code != ExitUsage {
		t.Fatalf("retry without selection: %+v", r)
	}
	if r = run(t, u, "", "jobs", "retry", id); r.code != 0 || strings.TrimSpace(r.out) != id {
		t.Fatalf("retry: %+v", r)
	}
	var changedBy string
	if err := pool.QueryRow(ctx, `SELECT changed_by FROM audit_log WHERE job_id = $1 AND operation = 'REQUEUE'`, id).Scan(&changedBy); err != nil || changedBy != "tester" {
		t.Fatalf("requeue audit actor %q %v", changedBy, err)
	}

	// purge
	if _, err := pool.Exec(ctx, `SELECT cancel_job(id) FROM job_queue`); err != nil {
		t.Fatal(err)
	}
	if _, err := pool.Exec(ctx, `UPDATE job_queue_archive SET completed_at = now() - interval '8 days'`); err != nil {
		t.Fatal(err)
	}
	if r = run(t, u, "", "jobs", "purge", "--older-than", "week"); r.code != ExitUsage {
		t.Fatalf("purge bad age: %+v", r)
	}
	if r = run(t, u, "", "jobs", "purge", "--older-than", "7d", "--dry-run"); r.code != 0 || !strings.Contains(r.out, "would purge 2") {
		t.Fatalf("purge dry-run: %+v", r)
	}
	if r = run(t, u, "", "jobs", "purge", "--older-than", "7d", "--yes"); r.code != 0 || !strings.Contains(r.out, "purged 2") {
		t.Fatalf("purge: %+v", r)
	}

	// watch without a terminal prints once; with --count it prints N times.
	if r = run(t, u, "", "jobs", "watch"); r.code != 0 || strings.Count(r.out, "pending") != 1 {
		t.Fatalf("watch: %+v", r)
	}
	if r = run(t, u, "", "jobs", "watch", "--interval", "100ms", "--count", "2", "-o", "json"); r.code != 0 || strings.Count(r.out, `"pending"`) != 2 {
		t.Fatalf("watch --count 2: %+v", r)
	}
}

// reclaim against an unreachable database exits 9.
func TestJobsReclaimUnreachable(t *testing.T) {
	r := run(t, "postgres://nobody@127.0.0.1:1/none?connect_timeout=2", "", "jobs", "reclaim")
	if r.code != ExitUnavailable {
		t.Fatalf("exit %d, want 9: %s", r.code, r.err)
	}
}
