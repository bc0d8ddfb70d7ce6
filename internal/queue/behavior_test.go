package queue_test

import (
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/v3ctl/v3ctl/internal/db"
	"github.com/v3ctl/v3ctl/internal/queue"
	"github.com/v3ctl/v3ctl/internal/testdb"
)

func ptrTime(t testing.TB, q db.DB, expr string) *time.Time {
	t.Helper()
	var ts time.Time
	if err := q.QueryRow(ctx, `SELECT `+expr).Scan(&ts); err != nil {
		t.Fatal(err)
	}
	return &ts
}

func ip(i int) *int { return &i }

// makeDue puts a pending job's next attempt in the past (instead of waiting
// out the backoff).
func makeDue(t testing.TB, q db.DB, id string) {
	t.Helper()
	if _, err := q.Exec(ctx, `UPDATE job_queue SET scheduled_at = now() - interval '1 second' WHERE id = $1`, id); err != nil {
		t.Fatal(err)
	}
}

// After a reclaim, the old holder cannot complete, fail, heartbeat,
// reschedule or release the job; also not when the same worker id claimed it
// again (the token differs).
func TestStaleHolderIsFenced(t *testing.T) {
	t.Parallel()
	pool := testdb.New(t)
	setConfig(t, pool, "worker.reclaim_jitter_max_seconds", 0)
	e := enqueue(t, pool, queue.EnqueueParams{})
	old := claimOne(t, pool, "w1")
	if _, err := pool.Exec(ctx, `UPDATE job_queue SET heartbeat_at = now() - interval '2 hours' WHERE id = $1`, e.JobID); err != nil {
		t.Fatal(err)
	}
	r, err := queue.Reclaim(ctx, pool, 10)
	if err != nil || r.Reclaimed != 1 {
		t.Fatalf("reclaim %+v %v", r, err)
	}
	for _, worker := range []string{"w2", "w1"} {
		makeDue(t, pool, e.JobID)
		cur := claimOne(t, pool, worker)
		if cur.ID != e.JobID || cur.Attempt != 2 && worker == "w2" || cur.LeaseToken == old.LeaseToken {
			t.Fatalf("re-claim: %+v", cur)
		}
		stale := old.Lease()
		if ok, err := queue.HeartbeatOne(ctx, pool, stale); ok || err != nil {
			t.Fatalf("%s: stale heartbeat ok=%v err=%v", worker, ok, err)
		}
		if lost, err := queue.Heartbeat(ctx, pool, "w1", []queue.Lease{stale}); err != nil || len(lost) != 1 {
			t.Fatalf("%s: stale batch heartbeat lost=%v err=%v", worker, lost, err)
		}
		if ok, err := queue.Complete(ctx, pool, stale, nil); ok || err != nil {
			t.Fatalf("%s: stale complete ok=%v err=%v", worker, ok, err)
		}
		if fr, err := queue.Fail(ctx, pool, stale, "boom", true); fr.OK || err != nil {
			t.Fatalf("%s: stale fail %+v err=%v", worker, fr, err)
		}
		if ok, err := queue.Reschedule(ctx, pool, stale, time.Second, "busy"); ok || err != nil {
			t.Fatalf("%s: stale reschedule ok=%v err=%v", worker, ok, err)
		}
		if ok, err := queue.Release(ctx, pool, stale); ok || err != nil {
			t.Fatalf("%s: stale release ok=%v err=%v", worker, ok, err)
		}
		// Nothing changed for the current holder.
		var st, holder, token string
		var retries int
		if err := pool.QueryRow(ctx, `SELECT status, worker_id, lease_token::text, retry_count FROM job_queue WHERE id = $1`, e.JobID).
			Scan(&st, &holder, &token, &retries); err != nil {
			t.Fatal(err)
		}
		if st != "processing" || holder != worker || token != cur.LeaseToken || retries != 1 {
			t.Fatalf("%s: job changed by the stale holder: %s %s %s %d", worker, st, holder, token, retries)
		}
		if ok, err := queue.Release(ctx, pool, cur.Lease()); !ok || err != nil {
			t.Fatalf("%s: current holder release ok=%v err=%v", worker, ok, err)
		}
	}
}

// Retryable failures back off exponentially (with jitter) and end in dead
// letter after max_retries, with the whole error history kept.
func TestBackoffThenDeadLetter(t *testing.T) {
	t.Parallel()
	pool := testdb.New(t)
	setConfig(t, pool, "queue.retry_base_delay_seconds", 10)
	setConfig(t, pool, "queue.retry_max_delay_seconds", 30)
	e := enqueue(t, pool, queue.EnqueueParams{MaxRetries: ip(3), CorrelationID: "c-9"})
	wantMax := []float64{10, 20, 30} // min(10*2^(n-1), 30)
	for n := 1; n <= 3; n++ {
		j := claimOne(t, pool, "w")
		if j.Attempt != n {
			t.Fatalf("attempt %d, want %d", j.Attempt, n)
		}
		before := time.Now()
		fr, err := queue.Fail(ctx, pool, j.Lease(), "vendor 503", true)
		if err != nil || !fr.OK || fr.Status != "pending" || fr.NextAttemptAt == nil {
			t.Fatalf("fail %d: %+v %v", n, fr, err)
		}
		delay := fr.NextAttemptAt.Sub(before).Seconds()
		if delay < wantMax[n-1]/2-1 || delay > wantMax[n-1]+1 {
			t.Fatalf("failure %d: next attempt in %.1fs, want between %.0f and %.0f", n, delay, wantMax[n-1]/2, wantMax[n-1])
		}
		// Not claimable before its time.
		if js, err := queue.Claim(ctx, pool, "w", nil, nil, 1); err != nil || len(js) != 0 {
			t.Fatalf("claimed during backoff: %v %v", js, err)
		}
		makeDue(t, pool, e.JobID)
	}
	j := claimOne(t, pool, "w")
	if j.Attempt != 4 || !j.IsLastAttempt() {
		t.Fatalf("last attempt: %+v", j)
	}
	fr, err := queue.Fail(ctx, pool, j.Lease(), "vendor 503 again", true)
	if err != nil || !fr.OK || fr.Status != "dead_letter" || fr.NextAttemptAt != nil {
		t.Fatalf("final fail: %+v %v", fr, err)
	}
	var hist []map[string]any
	var raw []byte
	var deadAt *time.Time
	if err := pool.QueryRow(ctx, `SELECT error_history, dead_letter_at FROM job_queue_archive WHERE id = $1 AND status = 'dead_letter'`, e.JobID).Scan(&raw, &deadAt); err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(raw, &hist); err != nil || len(hist) != 4 || deadAt == nil {
		t.Fatalf("history %s dead_at %v", raw, deadAt)
	}
	if hist[3]["error"] != "vendor 503 again" || hist[0]["attempt"].(float64) != 1 {
		t.Fatalf("history content %s", raw)
	}
	if c := count(t, pool, `SELECT count(*) FROM audit_log WHERE job_id = $1 AND correlation_id = 'c-9' AND operation = 'RETRY'`, e.JobID); c != 3 {
		t.Fatalf("RETRY audit rows %d", c)
	}
	if c := count(t, pool, `SELECT count(*) FROM audit_log WHERE job_id = $1 AND operation = 'DEAD_LETTER'`, e.JobID); c != 1 {
		t.Fatalf("DEAD_LETTER audit rows %d", c)
	}
}

func TestPermanentFailureIsDeadLetterAtOnce(t *testing.T) {
	t.Parallel()
	pool := testdb.New(t)
	e := enqueue(t, pool, queue.EnqueueParams{MaxRetries: ip(5)})
	j := claimOne(t, pool, "w")
	fr, err := queue.Fail(ctx, pool, j.Lease(), "unsupported mime type", false)
	if err != nil || fr.Status != "dead_letter" {
		t.Fatalf("%+v %v", fr, err)
	}
	if s := status(t, pool, e.JobID); s != "dead_letter" {
		t.Fatal(s)
	}
	// max_retries 0: the first retryable failure is final too.
	e2 := enqueue(t, pool, queue.EnqueueParams{MaxRetries: ip(0)})
	j2 := claimOne(t, pool, "w")
	if fr, err := queue.Fail(ctx, pool, j2.Lease(), "x", true); err != nil || fr.Status != "dead_letter" {
		t.Fatalf("%+v %v", fr, err)
	}
	if s := status(t, pool, e2.JobID); s != "dead_letter" {
		t.Fatal(s)
	}
}

// Reschedule consumes no attempt, cannot reopen a finished job and is
// bounded by queue.max_reschedules (then dead letter).
func TestRescheduleBound(t *testing.T) {
	t.Parallel()
	pool := testdb.New(t)
	setConfig(t, pool, "queue.max_reschedules", 3)
	e := enqueue(t, pool, queue.EnqueueParams{})
	for i := 1; i <= 3; i++ {
		j := claimOne(t, pool, "w")
		if j.Attempt != 1 {
			t.Fatalf("reschedule consumed an attempt: attempt %d", j.Attempt)
		}
		before := time.Now()
		ok, err := queue.Reschedule(ctx, pool, j.Lease(), 10*time.Second, "429 from vendor")
		if err != nil || !ok {
			t.Fatal(ok, err)
		}
		var at time.Time
		var rc int
		if err := pool.QueryRow(ctx, `SELECT scheduled_at, reschedule_count FROM job_queue WHERE id = $1 AND status = 'pending'`, e.JobID).Scan(&at, &rc); err != nil {
			t.Fatal(err)
		}
		if d := at.Sub(before).Seconds(); d < 9 || d > 13.6 || rc != i {
			t.Fatalf("rescheduled in %.1fs (want 10..12.5 with jitter), count %d", d, rc)
		}
		// Rescheduling a pending job is refused.
		if ok, err := queue.Reschedule(ctx, pool, j.Lease(), 0, ""); ok || err != nil {
			t.Fatal("rescheduled a pending job", err)
		}
		makeDue(t, pool, e.JobID)
	}
	j := claimOne(t, pool, "w")
	if ok, err := queue.Reschedule(ctx, pool, j.Lease(), time.Second, "still busy"); !ok || err != nil {
		t.Fatal(ok, err)
	}
	if s := status(t, pool, e.JobID); s != "dead_letter" {
		t.Fatalf("after the 4th reschedule with max 3: %s", s)
	}
	// A finished job cannot be reopened by reschedule (legacy form without a worker id either).
	if _, err := pool.Exec(ctx, `SELECT reschedule_job($1::uuid, 5, 'x', false)`, e.JobID); err != nil {
		t.Fatal(err)
	}
	if s := status(t, pool, e.JobID); s != "dead_letter" {
		t.Fatalf("legacy reschedule reopened a finished job: %s", s)
	}
	if c := count(t, pool, `SELECT count(*) FROM audit_log WHERE job_id = $1 AND operation = 'RESCHEDULE' AND reason = '429 from vendor'`, e.JobID); c != 3 {
		t.Fatalf("RESCHEDULE audit rows %d", c)
	}
}

func TestReleaseCancelRequeuePurge(t *testing.T) {
	t.Parallel()
	pool := testdb.New(t)
	a := enqueue(t, pool, queue.EnqueueParams{Priority: 1})
	j := claimOne(t, pool, "w")
	if ok, err := queue.Release(ctx, pool, j.Lease()); !ok || err != nil {
		t.Fatal(ok, err)
	}
	if j2 := claimOne(t, pool, "w"); j2.ID != a.JobID || j2.Attempt != 1 {
		t.Fatalf("released job: %+v", j2)
	} else {
		j = j2
	}
	// Cancel a processing job: the holder loses it.
	if ok, err := queue.Cancel(ctx, pool, a.JobID, "duplicate upload", "alice"); !ok || err != nil {
		t.Fatal(ok, err)
	}
	if ok, _ := queue.Complete(ctx, pool, j.Lease(), nil); ok {
		t.Fatal("completed a cancelled job")
	}
	if ok, err := queue.Cancel(ctx, pool, a.JobID, "", "alice"); ok || err != nil {
		t.Fatal("cancelled twice", err)
	}
	if c := count(t, pool, `SELECT count(*) FROM audit_log WHERE job_id = $1 AND operation = 'CANCEL' AND changed_by = 'alice'`, a.JobID); c != 1 {
		t.Fatalf("CANCEL audit rows %d", c)
	}

	// Dead letters back to pending with fresh attempts, history kept.
	var dead []string
	for i := 0; i < 3; i++ {
		jt := "report_generation"
		if i == 2 {
			jt = "audit_cleanup"
		}
		e := enqueue(t, pool, queue.EnqueueParams{JobType: jt})
		jj := claimOne(t, pool, "w")
		if fr, err := queue.Fail(ctx, pool, jj.Lease(), "bad", false); err != nil || fr.Status != "dead_letter" {
			t.Fatal(fr, err)
		}
		dead = append(dead, e.JobID)
	}
	ids, err := queue.Requeue(ctx, pool, queue.RequeueFilter{JobType: "audit_cleanup"}, "bob", "fixed")
	if err != nil || len(ids) != 1 || ids[0] != dead[2] {
		t.Fatalf("requeue by type: %v %v", ids, err)
	}
	ids, err = queue.Requeue(ctx, pool, queue.RequeueFilter{JobIDs: []string{dead[0]}}, "bob", "")
	if err != nil || len(ids) != 1 || ids[0] != dead[0] {
		t.Fatalf("requeue by id: %v %v", ids, err)
	}
	var st string
	var rc int
	var hist []byte
	if err := pool.QueryRow(ctx, `SELECT status, retry_count, error_history FROM job_queue WHERE id = $1`, dead[0]).Scan(&st, &rc, &hist); err != nil {
		t.Fatal(err)
	}
	if st != "pending" || rc != 0 || !strings.Contains(string(hist), "bad") {
		t.Fatalf("requeued: %s %d %s", st, rc, hist)
	}
	if status(t, pool, dead[1]) != "dead_letter" {
		t.Fatal("requeue touched an unselected dead letter")
	}

	// Purge: only archived jobs older than the cutoff; dead letters only on request.
	if _, err := pool.Exec(ctx, `UPDATE job_queue_archive SET completed_at = now() - interval '8 days'`); err != nil {
		t.Fatal(err)
	}
	res, err := queue.Purge(ctx, pool, 7*24*time.Hour, nil, 1, "carol")
	if err != nil || res.Purged != 1 || res.ByStatus["cancelled"] != 1 {
		t.Fatalf("purge: %+v %v", res, err)
	}
	if status(t, pool, dead[1]) != "dead_letter" {
		t.Fatal("purged a dead letter by default")
	}
	res, err = queue.Purge(ctx, pool, 30*24*time.Hour, []string{"dead_letter"}, 0, "carol")
	if err != nil || res.Purged != 0 {
		t.Fatalf("purge 30d: %+v %v", res, err)
	}
	res, err = queue.Purge(ctx, pool, 7*24*time.Hour, []string{"dead_letter"}, 0, "carol")
	if err != nil || res.Purged != 1 {
		t.Fatalf("purge dead letters: %+v %v", res, err)
	}
	if c := count(t, pool, `SELECT count(*) FROM job_queue`); c != 2 {
		t.Fatalf("purge touched unfinished jobs: %d left", c)
	}
	if c := count(t, pool, `SELECT count(*) FROM audit_log WHERE operation = 'PURGE' AND changed_by = 'carol'`); c != 2 {
		t.Fatalf("PURGE audit rows %d", c)
	}
}

// Bad inputs are refused with SQLSTATE 22023 and a message naming the value;
// nothing is written.
func TestEnqueueValidation(t *testing.T) {
	t.Parallel()
	pool := testdb.New(t)
	obj := json.RawMessage(`{"a":1}`)
	cases := []struct {
		name string
		p    queue.EnqueueParams
		msg  string
	}{
		{"unknown type", queue.EnqueueParams{JobType: "mining", JobName: "x", Payload: obj}, `unknown job type 'mining'`},
		{"lane of other type", queue.EnqueueParams{JobType: "ai_processing", JobName: "x", Payload: obj, Lane: "fast_queue"}, `invalid lane 'fast_queue' for job type 'ai_processing'`},
		{"lane on lane-less", queue.EnqueueParams{JobType: "audit_cleanup", JobName: "x", Payload: obj, Lane: "fast_queue"}, `has no lanes`},
		{"category", queue.EnqueueParams{JobType: "audit_cleanup", JobName: "x", Payload: obj, Category: "urgent"}, `invalid job category 'urgent'`},
		{"priority", queue.EnqueueParams{JobType: "audit_cleanup", JobName: "x", Payload: obj, Priority: 11}, `invalid priority 11`},
		{"negative priority", queue.EnqueueParams{JobType: "audit_cleanup", JobName: "x", Payload: obj, Priority: -1}, `invalid priority -1`},
		{"payload array", queue.EnqueueParams{JobType: "audit_cleanup", JobName: "x", Payload: json.RawMessage(`[1]`)}, `non-empty JSON object, got array`},
		{"payload empty", queue.EnqueueParams{JobType: "audit_cleanup", JobName: "x", Payload: json.RawMessage(`{}`)}, `got object (empty)`},
		{"payload null", queue.EnqueueParams{JobType: "audit_cleanup", JobName: "x"}, `got NULL`},
		{"max retries", queue.EnqueueParams{JobType: "audit_cleanup", JobName: "x", Payload: obj, MaxRetries: ip(101)}, `invalid max_retries 101`},
		{"name", queue.EnqueueParams{JobType: "audit_cleanup", JobName: " ", Payload: obj}, `invalid job name`},
		{"payload patient id", queue.EnqueueParams{JobType: "ai_processing", JobName: "x", Payload: json.RawMessage(`{"patient_id":"nope"}`)}, `payload patient_id is not a UUID`},
		{"patient mismatch", queue.EnqueueParams{JobType: "ai_processing", JobName: "x", Payload: json.RawMessage(`{"patient_id":"00000000-0000-0000-0000-000000000001"}`),
			PatientID: "00000000-0000-0000-0000-000000000002"}, `differs from the payload`},
		{"far future", queue.EnqueueParams{JobType: "audit_cleanup", JobName: "x", Payload: obj, ScheduledAt: ptrTime(t, pool, "now() + interval '2 years'")}, `more than a year ahead`},
	}
	for _, c := range cases {
		_, err := queue.Enqueue(ctx, pool, c.p)
		var pg *pgconn.PgError
		if err == nil || !errors.As(err, &pg) || pg.Code != "22023" || !strings.Contains(err.Error(), c.msg) {
			t.Errorf("%s: got %v, want 22023 containing %q", c.name, err, c.msg)
			continue
		}
		if pg.Hint == "" {
			t.Errorf("%s: no hint", c.name)
		}
	}
	if _, err := queue.Claim(ctx, pool, "", nil, nil, 1); err == nil || !strings.Contains(err.Error(), "invalid worker id") {
		t.Errorf("empty worker id: %v", err)
	}
	if _, err := queue.Claim(ctx, pool, "w", nil, nil, 5000); err == nil || !strings.Contains(err.Error(), "invalid claim limit") {
		t.Errorf("claim limit: %v", err)
	}
	if _, err := queue.Reschedule(ctx, pool, queue.Lease{JobID: "00000000-0000-0000-0000-000000000001", WorkerID: "w"}, 30*24*time.Hour, ""); err == nil {
		t.Error("reschedule by 30 days accepted")
	}
	if _, err := queue.Purge(ctx, pool, time.Hour, []string{"pending"}, 0, ""); err == nil || !strings.Contains(err.Error(), `cannot purge status 'pending'`) {
		t.Errorf("purge pending: %v", err)
	}
	if c := count(t, pool, `SELECT (SELECT count(*) FROM job_queue) + (SELECT count(*) FROM job_queue_archive) + (SELECT count(*) FROM audit_log)`); c != 0 {
		t.Fatalf("refused calls wrote %d rows", c)
	}
	// Defaults: the lane of a laned type, ids and correlation from the payload.
	e := enqueue(t, pool, queue.EnqueueParams{JobType: "shell_file_processing",
		Payload: json.RawMessage(`{"patient_id":"00000000-0000-0000-0000-00000000000a","correlation_id":"corr-p"}`)})
	var lane, corr, patient string
	if err := pool.QueryRow(ctx, `SELECT job_lane, correlation_id, patient_id::text FROM job_queue WHERE id = $1`, e.JobID).Scan(&lane, &corr, &patient); err != nil {
		t.Fatal(err)
	}
	if lane != "standard_queue" || corr != "corr-p" || patient != "00000000-0000-0000-0000-00000000000a" {
		t.Fatalf("defaults: %s %s %s", lane, corr, patient)
	}
}

func TestMaintenanceModeStopsClaims(t *testing.T) {
	t.Parallel()
	pool := testdb.New(t)
	enqueue(t, pool, queue.EnqueueParams{})
	setConfig(t, pool, "system.maintenance_mode", true)
	if js, err := queue.Claim(ctx, pool, "w", nil, nil, 10); err != nil || len(js) != 0 {
		t.Fatalf("claimed in maintenance mode: %v %v", js, err)
	}
	setConfig(t, pool, "system.maintenance_mode", false)
	claimOne(t, pool, "w")
}

// The hooks later migrations replace are called in the same transaction:
// usage_enforce_enqueue before an insert (a refusal writes nothing) and
// release_job_capacity on every way a job leaves a worker.
func TestHooksAreCalled(t *testing.T) {
	t.Parallel()
	pool := testdb.New(t)
	setConfig(t, pool, "worker.reclaim_jitter_max_seconds", 0)
	if _, err := pool.Exec(ctx, `
		CREATE TABLE public.hook_calls (job_id uuid);
		CREATE OR REPLACE FUNCTION public.release_job_capacity(p_job_id uuid) RETURNS void
		  LANGUAGE sql SECURITY DEFINER SET search_path = '' AS 'INSERT INTO public.hook_calls VALUES (p_job_id)';
		CREATE OR REPLACE FUNCTION public.usage_enforce_enqueue(p_job_type text, p_patient_id uuid, p_payload jsonb) RETURNS void
		  LANGUAGE plpgsql SECURITY DEFINER SET search_path = '' AS $$
		BEGIN
		  IF p_payload ? 'over_limit' THEN
		    RAISE EXCEPTION USING ERRCODE = 'P0001', MESSAGE = 'usage limit reached';
		  END IF;
		END $$;`); err != nil {
		t.Fatal(err)
	}
	if _, err := queue.Enqueue(ctx, pool, queue.EnqueueParams{JobType: "ai_processing", JobName: "x", Payload: json.RawMessage(`{"over_limit":true}`)}); err == nil || !strings.Contains(err.Error(), "usage limit reached") {
		t.Fatalf("usage hook not enforced: %v", err)
	}
	if c := count(t, pool, `SELECT count(*) FROM job_queue`); c != 0 {
		t.Fatal("refused enqueue wrote a job")
	}
	for i := 0; i < 6; i++ {
		enqueue(t, pool, queue.EnqueueParams{})
	}
	js, err := queue.Claim(ctx, pool, "w", nil, nil, 6)
	if err != nil || len(js) != 6 {
		t.Fatal(err)
	}
	mustTrue := func(ok bool, err error) {
		t.Helper()
		if !ok || err != nil {
			t.Fatal(ok, err)
		}
	}
	mustTrue(queue.Complete(ctx, pool, js[0].Lease(), nil))
	fr, err := queue.Fail(ctx, pool, js[1].Lease(), "x", true)
	mustTrue(fr.OK, err)
	mustTrue(queue.Reschedule(ctx, pool, js[2].Lease(), 0, ""))
	mustTrue(queue.Release(ctx, pool, js[3].Lease()))
	mustTrue(queue.Cancel(ctx, pool, js[4].ID, "", ""))
	if _, err := pool.Exec(ctx, `UPDATE job_queue SET heartbeat_at = now() - interval '1 day' WHERE id = $1`, js[5].ID); err != nil {
		t.Fatal(err)
	}
	r, err := queue.Reclaim(ctx, pool, 10)
	mustTrue(r.Reclaimed == 1, err)
	for _, j := range js {
		if c := count(t, pool, `SELECT count(*) FROM hook_calls WHERE job_id = $1`, j.ID); c != 1 {
			t.Fatalf("release_job_capacity called %d times for job %s", c, j.ID)
		}
	}
}

// Browsers (anon, authenticated) can neither call the queue functions nor
// read the tables.
func TestRolesCannotUseQueue(t *testing.T) {
	t.Parallel()
	pool := testdb.New(t)
	for _, role := range []string{"anon", "authenticated"} {
		for _, sql := range []string{
			`SELECT * FROM enqueue_job_v3('audit_cleanup', 'x', '{"a":1}')`,
			`SELECT * FROM claim_next_job_v3('w')`,
			`SELECT reclaim_timed_out_jobs()`,
			`SELECT count(*) FROM job_queue`,
			`SELECT count(*) FROM job_queue_archive`,
			`SELECT count(*) FROM job_queue_all`,
		} {
			err := pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
				if _, err := tx.Exec(ctx, `SET LOCAL ROLE `+role+`; SELECT set_config('request.jwt.claims', '{"sub":"00000000-0000-0000-0000-000000000001","role":"`+role+`"}', true)`); err != nil {
					return err
				}
				_, err := tx.Exec(ctx, sql)
				return err
			})
			var pg *pgconn.PgError
			if !errors.As(err, &pg) || pg.Code != "42501" {
				t.Errorf("%s: %s: got %v, want permission denied", role, sql, err)
			}
		}
	}
	// service_role can.
	err := pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, `SET LOCAL ROLE service_role`); err != nil {
			return err
		}
		if _, err := tx.Exec(ctx, `SELECT * FROM enqueue_job_v3('audit_cleanup', 'x', '{"a":1}')`); err != nil {
			return err
		}
		_, err := tx.Exec(ctx, `SELECT * FROM claim_next_job_v3('w')`)
		return err
	})
	if err != nil {
		t.Fatalf("service_role: %v", err)
	}
}

// The archive must keep the same columns in the same order as job_queue:
// the functions copy whole rows between them.
func TestArchiveColumnsMatch(t *testing.T) {
	t.Parallel()
	pool := testdb.New(t)
	cols := func(table string) string {
		var s string
		if err := pool.QueryRow(ctx, `SELECT string_agg(attname || ' ' || format_type(atttypid, atttypmod), ', ' ORDER BY attnum)
			FROM pg_attribute WHERE attrelid = $1::regclass AND attnum > 0 AND NOT attisdropped`, table).Scan(&s); err != nil {
			t.Fatal(err)
		}
		return s
	}
	if a, b := cols("public.job_queue"), cols("public.job_queue_archive"); a != b {
		t.Fatalf("columns differ:\njob_queue:         %s\njob_queue_archive: %s", a, b)
	}
}

func TestEnqueueNotifies(t *testing.T) {
	t.Parallel()
	pool := testdb.New(t)
	conn, err := pool.Acquire(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Release()
	if _, err := conn.Exec(ctx, `LISTEN v3_jobs`); err != nil {
		t.Fatal(err)
	}
	enqueue(t, pool, queue.EnqueueParams{JobType: "ai_processing", Lane: "ai_queue_complex"})
	wctx, cancel := contextWithTimeout(10 * time.Second)
	defer cancel()
	n, err := conn.Conn().WaitForNotification(wctx)
	if err != nil {
		t.Fatal(err)
	}
	if n.Channel != "v3_jobs" || !strings.Contains(n.Payload, `"ai_queue_complex"`) {
		t.Fatalf("notification %+v", n)
	}
}
