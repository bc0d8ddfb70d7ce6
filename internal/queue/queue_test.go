package queue_test

import (
	"context"
	"encoding/json"
	"fmt"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/v3ctl/v3ctl/internal/db"
	"github.com/v3ctl/v3ctl/internal/queue"
	"github.com/v3ctl/v3ctl/internal/testdb"
)

var ctx = context.Background()

func enqueue(t testing.TB, q db.DB, p queue.EnqueueParams) queue.Enqueued {
	t.Helper()
	if p.JobType == "" {
		p.JobType = "report_generation"
	}
	if p.JobName == "" {
		p.JobName = "test job"
	}
	if p.Payload == nil {
		p.Payload = json.RawMessage(`{"n":1}`)
	}
	e, err := queue.Enqueue(ctx, q, p)
	if err != nil {
		t.Fatalf("enqueue: %v", err)
	}
	return e
}

func claimOne(t testing.TB, q db.DB, worker string) queue.Job {
	t.Helper()
	js, err := queue.Claim(ctx, q, worker, nil, nil, 1)
	if err != nil {
		t.Fatalf("claim: %v", err)
	}
	if len(js) != 1 {
		t.Fatalf("claim: got %d jobs, want 1", len(js))
	}
	return js[0]
}

func count(t testing.TB, q db.DB, sql string, args ...any) int {
	t.Helper()
	var n int
	if err := q.QueryRow(ctx, sql, args...).Scan(&n); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
	return n
}

func status(t testing.TB, q db.DB, id string) string {
	t.Helper()
	var s string
	if err := q.QueryRow(ctx, `SELECT status FROM job_queue_all WHERE id = $1`, id).Scan(&s); err != nil {
		t.Fatalf("status of %s: %v", id, err)
	}
	return s
}

func setConfig(t testing.TB, pool *pgxpool.Pool, key string, v any) {
	t.Helper()
	if _, err := pool.Exec(ctx, `UPDATE system_configuration SET config_value = $2::jsonb WHERE config_key = $1`, key, fmt.Sprint(v)); err != nil {
		t.Fatal(err)
	}
}

func TestLifecycleCompleteMovesToArchive(t *testing.T) {
	t.Parallel()
	pool := testdb.New(t)
	e := enqueue(t, pool, queue.EnqueueParams{JobType: "ai_processing", CorrelationID: "corr-1",
		Payload: json.RawMessage(`{"shell_file_id":"00000000-0000-0000-0000-000000000001"}`)})
	j := claimOne(t, pool, "w1")
	if j.ID != e.JobID || j.Attempt != 1 || j.LeaseToken == "" || j.Lane == nil || *j.Lane != "ai_queue_simple" {
		t.Fatalf("claimed %+v", j)
	}
	if j.ShellFileID == nil || *j.ShellFileID != "00000000-0000-0000-0000-000000000001" {
		t.Fatalf("shell_file_id from payload not set: %+v", j.ShellFileID)
	}
	lost, err := queue.Heartbeat(ctx, pool, "w1", []queue.Lease{j.Lease()})
	if err != nil || len(lost) != 0 {
		t.Fatalf("heartbeat lost=%v err=%v", lost, err)
	}
	ok, err := queue.Complete(ctx, pool, j.Lease(), json.RawMessage(`{"ok":true}`))
	if err != nil || !ok {
		t.Fatalf("complete ok=%v err=%v", ok, err)
	}
	if n := count(t, pool, `SELECT count(*) FROM job_queue`); n != 0 {
		t.Fatalf("job_queue still has %d rows", n)
	}
	if s := status(t, pool, e.JobID); s != "completed" {
		t.Fatalf("status %s", s)
	}
	// Completing twice is refused.
	ok, err = queue.Complete(ctx, pool, j.Lease(), nil)
	if err != nil || ok {
		t.Fatalf("second complete ok=%v err=%v", ok, err)
	}
	ops := count(t, pool, `SELECT count(*) FROM audit_log WHERE job_id = $1 AND correlation_id = 'corr-1' AND operation IN ('ENQUEUE','CLAIM','COMPLETE')`, e.JobID)
	if ops != 3 {
		t.Fatalf("audit rows: %d, want 3", ops)
	}
	// The claim's audit row names the worker, the attempt and the old status.
	var by, attempt, worker, old string
	if err := pool.QueryRow(ctx, `SELECT changed_by, new_values->>'attempt', new_values->>'worker_id', old_values->>'status'
		FROM audit_log WHERE job_id = $1 AND operation = 'CLAIM'`, e.JobID).Scan(&by, &attempt, &worker, &old); err != nil {
		t.Fatal(err)
	}
	if by != "w1" || attempt != "1" || worker != "w1" || old != "pending" {
		t.Fatalf("CLAIM audit row: changed_by %q attempt %q worker %q old status %q", by, attempt, worker, old)
	}
}

func contextWithTimeout(d time.Duration) (context.Context, context.CancelFunc) {
	return context.WithTimeout(ctx, d)
}

// CompleteMany completes held jobs together and answers false, changing
// nothing, for a lease that is not held (stale token, other worker).
func TestCompleteManyFencesEachJob(t *testing.T) {
	t.Parallel()
	pool := testdb.New(t)
	for i := 0; i < 4; i++ {
		enqueue(t, pool, queue.EnqueueParams{Payload: json.RawMessage(fmt.Sprintf(`{"n":%d}`, i))})
	}
	js, err := queue.Claim(ctx, pool, "w1", nil, nil, 4)
	if err != nil || len(js) != 4 {
		t.Fatalf("claim: %d jobs, %v", len(js), err)
	}
	stale := js[2].Lease()
	stale.Token = "00000000-0000-4000-8000-000000000000"
	other := js[3].Lease()
	other.WorkerID = "w2"
	cs := []queue.Completion{
		{Lease: js[0].Lease(), Result: json.RawMessage(`{"n":0}`)},
		{Lease: js[1].Lease()},
		{Lease: stale},
		{Lease: other},
	}
	ok, err := queue.CompleteMany(ctx, pool, cs)
	if err != nil {
		t.Fatal(err)
	}
	if want := []bool{true, true, false, false}; fmt.Sprint(ok) != fmt.Sprint(want) {
		t.Fatalf("CompleteMany = %v, want %v", ok, want)
	}
	for i, want := range []string{"completed", "completed", "processing", "processing"} {
		if s := status(t, pool, js[i].ID); s != want {
			t.Fatalf("job %d: %s, want %s", i, s, want)
		}
	}
	var res string
	if err := pool.QueryRow(ctx, `SELECT job_result::text FROM job_queue_all WHERE id = $1`, js[0].ID).Scan(&res); err != nil || res != `{"n": 0}` {
		t.Fatalf("result %q %v", res, err)
	}
	// The same archive rows and audit trail as complete_job leaves.
	if n := count(t, pool, `SELECT count(*) FROM job_queue_archive WHERE id = ANY ($1::uuid[]) AND status = 'completed'
		AND lease_token IS NULL AND completed_at IS NOT NULL AND worker_id = 'w1'`, []string{js[0].ID, js[1].ID}); n != 2 {
		t.Fatalf("%d archived completed rows, want 2", n)
	}
	if n := count(t, pool, `SELECT count(*) FROM audit_log WHERE job_id = ANY ($1::uuid[]) AND operation = 'COMPLETE'
		AND changed_by = 'w1' AND new_values->>'attempt' = '1' AND new_values->>'status' = 'completed'`, []string{js[0].ID, js[1].ID}); n != 2 {
		t.Fatalf("%d COMPLETE audit rows, want 2", n)
	}
	if n := count(t, pool, `SELECT count(*) FROM job_queue WHERE id = ANY ($1::uuid[])`, []string{js[0].ID, js[1].ID}); n != 0 {
		t.Fatalf("%d completed jobs still in job_queue", n)
	}
	// A second call with the same leases changes nothing.
	ok, err = queue.CompleteMany(ctx, pool, cs[:2])
	if err != nil || ok[0] || ok[1] {
		t.Fatalf("repeat: %v %v", ok, err)
	}
}

// A failure whose text is not valid UTF-8 or holds NUL bytes (a handler's
// binary stderr) is still recorded, cleaned, instead of being refused.
func TestFailWithBinaryErrorText(t *testing.T) {
	t.Parallel()
	pool := testdb.New(t)
	e := enqueue(t, pool, queue.EnqueueParams{})
	j := claimOne(t, pool, "w1")
	r, err := queue.Fail(ctx, pool, j.Lease(), "exit 1: \xff\xfe\x00stderr é", false)
	if err != nil || !r.OK || r.Status != "dead_letter" {
		t.Fatalf("fail: %+v %v", r, err)
	}
	var last string
	if err := pool.QueryRow(ctx, `SELECT error_details->>'error' FROM job_queue_all WHERE id = $1`, e.JobID).Scan(&last); err != nil {
		t.Fatal(err)
	}
	if last != "exit 1: \uFFFDstderr é" {
		t.Fatalf("stored %q", last)
	}
}

// CompleteMany commits all of its completions or none: one that the
// database refuses (a result that is not JSON) rolls back the others.
func TestCompleteManyIsAtomic(t *testing.T) {
	t.Parallel()
	pool := testdb.New(t)
	for i := 0; i < 3; i++ {
		enqueue(t, pool, queue.EnqueueParams{Payload: json.RawMessage(fmt.Sprintf(`{"n":%d}`, i))})
	}
	js, err := queue.Claim(ctx, pool, "w1", nil, nil, 3)
	if err != nil || len(js) != 3 {
		t.Fatalf("claim: %d jobs, %v", len(js), err)
	}
	_, err = queue.CompleteMany(ctx, pool, []queue.Completion{
		{Lease: js[0].Lease()},
		{Lease: js[1].Lease(), Result: json.RawMessage(`{not json`)},
		{Lease: js[2].Lease()},
	})
	if err == nil {
		t.Fatal("want an error for the malformed result")
	}
	for _, j := range js {
		if s := status(t, pool, j.ID); s != "processing" {
			t.Fatalf("job %s is %s after a failed batch, want processing", j.ID, s)
		}
	}
	ok, err := queue.CompleteMany(ctx, pool, []queue.Completion{{Lease: js[0].Lease()}, {Lease: js[1].Lease()}, {Lease: js[2].Lease()}})
	if err != nil || !ok[0] || !ok[1] || !ok[2] {
		t.Fatalf("retry: %v %v", ok, err)
	}
}

// complete_jobs_v3 refuses malformed input with 22023 and changes nothing.
func TestCompleteJobsV3Validation(t *testing.T) {
	t.Parallel()
	pool := testdb.New(t)
	enqueue(t, pool, queue.EnqueueParams{})
	j := claimOne(t, pool, "w1")
	for name, args := range map[string][]any{
		"no ids":           {"w1", []string{}, []string{}, nil},
		"lengths differ":   {"w1", []string{j.ID}, []string{j.LeaseToken, j.LeaseToken}, nil},
		"results differ":   {"w1", []string{j.ID}, []string{j.LeaseToken}, []any{nil, nil}},
		"null token":       {"w1", []string{j.ID}, []any{nil}, nil},
		"empty worker id":  {"", []string{j.ID}, []string{j.LeaseToken}, nil},
		"null ids array":   {"w1", nil, []string{j.LeaseToken}, nil},
		"null token array": {"w1", []string{j.ID}, nil, nil},
	} {
		_, err := pool.Exec(ctx, `SELECT public.complete_jobs_v3($1, $2::uuid[], $3::uuid[], $4::jsonb[])`, args...)
		if !db.IsInvalidInput(err) {
			t.Errorf("%s: want 22023, got %v", name, err)
		}
	}
	if s := status(t, pool, j.ID); s != "processing" {
		t.Fatalf("job is %s after refused calls", s)
	}
}
