package usage_test

import (
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/v3ctl/v3ctl/internal/queue"
	"github.com/v3ctl/v3ctl/internal/testdb"
	"github.com/v3ctl/v3ctl/internal/usage"
)

// A shell file deleted while its upload is being tracked: the delete waits
// for the tracking transaction (the file row is locked FOR SHARE), so the
// storage trigger sees the counted bytes and releases them. A file deleted
// before tracking is "not found".
func TestTrackingLocksShellFile(t *testing.T) {
	t.Parallel()
	pool := testdb.New(t)
	_, self := newAccount(t, pool, "lock@example.com")
	f := newFile(t, pool, self, 2*usage.BytesPerMB)

	tx1, err := pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer tx1.Rollback(ctx)
	if _, err := usage.TrackUpload(ctx, tx1, self, f, 2*usage.BytesPerMB, 1, time.Time{}); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() {
		_, err := pool.Exec(ctx, `/* usage-lock-test */ DELETE FROM public.shell_files WHERE id = $1::uuid`, f)
		done <- err
	}()
	// The delete must wait for tx1's row lock (bounded poll: hang guard only).
	waiting := false
	for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline) && !waiting; {
		select {
		case err := <-done:
			t.Fatalf("delete finished while the tracking transaction was open: %v", err)
		default:
		}
		waiting = count(t, pool, `SELECT count(*) FROM pg_stat_activity
			WHERE wait_event_type = 'Lock' AND query LIKE '/* usage-lock-test */%'`) == 1
		if !waiting {
			time.Sleep(10 * time.Millisecond)
		}
	}
	if !waiting {
		t.Fatal("the delete never waited for the tracking transaction")
	}
	if err := tx1.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("delete: %v", err)
		}
	case <-time.After(60 * time.Second):
		t.Fatal("delete still blocked after the tracking transaction committed")
	}
	if n := count(t, pool, `SELECT storage_bytes FROM public.usage_storage WHERE profile_id = $1::uuid`, self); n != 0 {
		t.Fatalf("storage level %d bytes after the file was deleted, want 0", n)
	}
	if drift, err := usage.Verify(ctx, pool, time.Time{}); err != nil || len(drift) != 0 {
		t.Fatalf("verify: %v %v", drift, err)
	}

	// Deleted first: tracking refuses and writes nothing.
	g := newFile(t, pool, self, 100)
	if _, err := pool.Exec(ctx, `DELETE FROM public.shell_files WHERE id = $1::uuid`, g); err != nil {
		t.Fatal(err)
	}
	before := count(t, pool, `SELECT count(*) FROM public.usage_events`)
	if _, err := usage.TrackUpload(ctx, pool, self, g, 100, 1, time.Time{}); sqlState(err) != "22023" || !strings.Contains(err.Error(), "not found") {
		t.Fatalf("tracking a deleted file: %v, want 22023 not found", err)
	}
	if after := count(t, pool, `SELECT count(*) FROM public.usage_events`); after != before {
		t.Fatalf("refused tracking wrote %d events", after-before)
	}
}

// Creating a plan requires all four limits (JSON null = unlimited); an
// update changes only the fields given.
func TestCreatePlanRequiresAllLimits(t *testing.T) {
	t.Parallel()
	pool := testdb.New(t)
	create := func(fields string) error {
		_, err := pool.Exec(ctx, `SELECT public.upsert_subscription_plan('family', $1::jsonb, true, 'tester', NULL)`, fields)
		return err
	}
	err := create(`{"price_cents": 1999, "monthly_pages_limit": null}`)
	if sqlState(err) != "22023" {
		t.Fatalf("create without limits: %v, want 22023", err)
	}
	for _, k := range []string{"monthly_shell_files_limit", "monthly_ai_tokens_limit", "storage_limit_bytes"} {
		if !strings.Contains(err.Error(), k) {
			t.Errorf("error does not name %s: %v", k, err)
		}
	}
	if strings.Contains(err.Error(), "monthly_pages_limit") {
		t.Errorf("error names a limit that was given: %v", err)
	}
	err = create(`{"price_cents": 1999, "monthly_shell_files_limit": 300, "monthly_pages_limit": 3000, "monthly_ai_tokens_limit": null}`)
	if sqlState(err) != "22023" || !strings.Contains(err.Error(), "storage_limit_bytes") {
		t.Fatalf("create without storage limit: %v", err)
	}
	// Through the Go API: only some limits set.
	price := int64(1999)
	_, err = usage.CreatePlan(ctx, pool, "family", usage.PlanFields{PriceCents: &price,
		ShellFilesLimit: usage.Limit{Set: true, Value: 300}}, "tester", "", false)
	if sqlState(err) != "22023" || !strings.Contains(err.Error(), "monthly_pages_limit") {
		t.Fatalf("CreatePlan without limits: %v", err)
	}
	if n := count(t, pool, `SELECT count(*) FROM public.subscription_plans WHERE plan_key = 'family'`); n != 0 {
		t.Fatal("a refused create left a plan")
	}
	// All four given, one explicitly unlimited.
	if err := create(`{"price_cents": 1999, "monthly_shell_files_limit": 300, "monthly_pages_limit": 3000,
		"monthly_ai_tokens_limit": null, "storage_limit_bytes": 1048576}`); err != nil {
		t.Fatal(err)
	}
	// Update: partial.
	if _, err := pool.Exec(ctx, `SELECT public.upsert_subscription_plan('family', '{"monthly_pages_limit": 4000}', false, 'tester', NULL)`); err != nil {
		t.Fatalf("partial update: %v", err)
	}
	var files, pages, bytes *int64
	var tokens *int64
	if err := pool.QueryRow(ctx, `SELECT monthly_shell_files_limit::bigint, monthly_pages_limit::bigint, monthly_ai_tokens_limit, storage_limit_bytes
		FROM public.subscription_plans WHERE plan_key = 'family'`).Scan(&files, &pages, &tokens, &bytes); err != nil {
		t.Fatal(err)
	}
	if files == nil || *files != 300 || pages == nil || *pages != 4000 || tokens != nil || bytes == nil || *bytes != 1048576 {
		t.Fatalf("plan after update: files %v pages %v tokens %v bytes %v", files, pages, tokens, bytes)
	}
}

// AI usage of a known job counts only for the job's own profile (its
// patient_id, else its payload's patient_id), whether the job is queued or
// archived; an unknown job id is accepted; retries count once.
func TestAIJobOwnership(t *testing.T) {
	t.Parallel()
	pool := testdb.New(t)
	account, self := newAccount(t, pool, "jobs@example.com")
	child := addProfile(t, pool, account, "child")
	_, other := newAccount(t, pool, "stranger@example.com")

	queued, err := queue.Enqueue(ctx, pool, queue.EnqueueParams{JobType: "ai_processing", JobName: "t", Lane: "ai_queue_simple",
		Payload: json.RawMessage(`{"note": "x"}`), PatientID: self})
	if err != nil {
		t.Fatal(err)
	}
	insert := func(table, patient, payload string) string {
		t.Helper()
		var id string
		done := "NULL"
		if table == "job_queue_archive" {
			done = "now()"
		}
		if err := pool.QueryRow(ctx, `INSERT INTO public.`+table+` (job_type, job_name, job_payload, patient_id, completed_at)
			VALUES ('ai_processing', 't', $1::jsonb, nullif($2, '')::uuid, `+done+`) RETURNING id::text`, payload, patient).Scan(&id); err != nil {
			t.Fatal(err)
		}
		return id
	}
	payloadOnly := insert("job_queue", "", `{"patient_id": "`+strings.ToUpper(child)+`"}`)
	noProfile := insert("job_queue", "", `{"note": "x"}`)
	archived := insert("job_queue_archive", self, `{"note": "x"}`)
	unknown := newUUID()

	for _, c := range []struct {
		name, profile, job string
		ok                 bool
	}{
		{"queued, own profile", self, queued.JobID, true},
		{"queued, retry", self, queued.JobID, true},
		{"queued, same account other profile", child, queued.JobID, false},
		{"queued, other account", other, queued.JobID, false},
		{"payload patient_id, own profile", child, payloadOnly, true},
		{"payload patient_id, other profile", self, payloadOnly, false},
		{"job without a profile", self, noProfile, false},
		{"archived, own profile", self, archived, true},
		{"archived, other profile", other, archived, false},
		{"unknown job", other, unknown, true},
	} {
		_, err := usage.TrackAI(ctx, pool, c.profile, c.job, 100, 1, time.Time{})
		if c.ok && err != nil {
			t.Errorf("%s: %v", c.name, err)
		}
		if !c.ok && (sqlState(err) != "22023" || !strings.Contains(err.Error(), c.job)) {
			t.Errorf("%s: %v, want 22023 naming the job", c.name, err)
		}
	}
	if n := count(t, pool, `SELECT count(*) FROM public.usage_events WHERE event_type = 'ai_processing_completed'`); n != 4 {
		t.Fatalf("%d AI events, want 4 (queued once, payload, archived, unknown)", n)
	}
	if n := count(t, pool, `SELECT coalesce(sum(ai_tokens), 0) FROM public.usage_monthly WHERE account_id = $1::uuid`, account); n != 300 {
		t.Fatalf("account tokens %d, want 300", n)
	}
}
