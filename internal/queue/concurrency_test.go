package queue_test

import (
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"sort"
	"sync"
	"testing"

	"github.com/v3ctl/v3ctl/internal/queue"
	"github.com/v3ctl/v3ctl/internal/testdb"
)

// Many goroutines claiming 10k jobs (single and batch claims): every job is
// claimed exactly once, none is lost, all end completed in the archive.
func TestClaimEachJobExactlyOnce(t *testing.T) {
	t.Parallel()
	n := 10000
	if testing.Short() {
		n = 2000
	}
	pool := testdb.New(t)
	if _, err := pool.Exec(ctx, `SELECT count(*) FROM generate_series(1, $1) g,
		LATERAL enqueue_job_v3('report_generation', 'bulk', jsonb_build_object('n', g), 'standard', 1 + g % 10)`, n); err != nil {
		t.Fatal(err)
	}
	const workers = 16
	var mu sync.Mutex
	seen := make(map[string]string, n)
	var dup []string
	var wg sync.WaitGroup
	errs := make(chan error, workers)
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			worker := fmt.Sprintf("w%d", w)
			for {
				limit := 1
				if w%2 == 1 {
					limit = 1 + rand.IntN(25)
				}
				js, err := queue.Claim(ctx, pool, worker, nil, nil, limit)
				if err != nil {
					errs <- err
					return
				}
				if len(js) == 0 {
					return
				}
				for _, j := range js {
					mu.Lock()
					if prev, ok := seen[j.ID]; ok {
						dup = append(dup, j.ID+" by "+prev+" and "+worker)
					}
					seen[j.ID] = worker
					mu.Unlock()
					ok, err := queue.Complete(ctx, pool, j.Lease(), nil)
					if err != nil {
						errs <- err
						return
					}
					if !ok {
						errs <- fmt.Errorf("complete of %s by its holder returned false", j.ID)
						return
					}
				}
			}
		}(w)
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	if len(dup) > 0 {
		t.Fatalf("%d jobs claimed twice, e.g. %s", len(dup), dup[0])
	}
	if len(seen) != n {
		t.Fatalf("claimed %d distinct jobs, want %d", len(seen), n)
	}
	if c := count(t, pool, `SELECT count(*) FROM job_queue`); c != 0 {
		t.Fatalf("%d jobs left in job_queue", c)
	}
	if c := count(t, pool, `SELECT count(*) FROM job_queue_archive WHERE status = 'completed'`); c != n {
		t.Fatalf("%d completed jobs in the archive, want %d", c, n)
	}
	if c := count(t, pool, `SELECT count(DISTINCT job_id) FROM audit_log WHERE operation = 'CLAIM'`); c != n {
		t.Fatalf("%d jobs with a CLAIM audit row, want %d", c, n)
	}
}

// Claim order: priority 1 first, then the oldest scheduled_at; jobs not yet
// due are not claimed; type and lane filters apply.
func TestClaimPriorityOrder(t *testing.T) {
	t.Parallel()
	pool := testdb.New(t)
	type want struct {
		prio int
		ago  int // seconds in the past
	}
	var jobs []want
	for i := 0; i < 60; i++ {
		jobs = append(jobs, want{1 + rand.IntN(10), rand.IntN(1000)})
	}
	for i, w := range jobs {
		if _, err := pool.Exec(ctx, `SELECT enqueue_job_v3('report_generation', $1, '{"x":1}', 'standard', $2, now() - make_interval(secs => $3))`,
			fmt.Sprint("job", i), w.prio, w.ago); err != nil {
			t.Fatal(err)
		}
	}
	// A most-urgent job that is not due yet must not be claimed.
	future := enqueue(t, pool, queue.EnqueueParams{Priority: 1, ScheduledAt: ptrTime(t, pool, "now() + interval '1 hour'")})
	sort.SliceStable(jobs, func(a, b int) bool {
		if jobs[a].prio != jobs[b].prio {
			return jobs[a].prio < jobs[b].prio
		}
		return jobs[a].ago > jobs[b].ago
	})
	var got []queue.Job
	for {
		js, err := queue.Claim(ctx, pool, "w", nil, nil, 1+rand.IntN(4))
		if err != nil {
			t.Fatal(err)
		}
		if len(js) == 0 {
			break
		}
		got = append(got, js...)
	}
	if len(got) != len(jobs) {
		t.Fatalf("claimed %d, want %d", len(got), len(jobs))
	}
	for i := range got {
		if got[i].ID == future.JobID {
			t.Fatal("claimed a job that is not due")
		}
		if got[i].Priority != jobs[i].prio {
			t.Fatalf("claim %d has priority %d, want %d", i, got[i].Priority, jobs[i].prio)
		}
		if i > 0 && got[i].Priority == got[i-1].Priority && got[i].ScheduledAt.Before(got[i-1].ScheduledAt) {
			t.Fatalf("claim %d is newer than claim %d within priority %d", i-1, i, got[i].Priority)
		}
	}

	// Filters.
	sf := enqueue(t, pool, queue.EnqueueParams{JobType: "shell_file_processing", Lane: "fast_queue"})
	ai := enqueue(t, pool, queue.EnqueueParams{JobType: "ai_processing", Lane: "ai_queue_complex"})
	js, err := queue.Claim(ctx, pool, "w", []string{"ai_processing"}, []string{"ai_queue_simple"}, 5)
	if err != nil || len(js) != 0 {
		t.Fatalf("lane filter: %v %v", js, err)
	}
	js, err = queue.Claim(ctx, pool, "w", nil, []string{"fast_queue"}, 5)
	if err != nil || len(js) != 1 || js[0].ID != sf.JobID {
		t.Fatalf("lane filter fast_queue: %v %v", js, err)
	}
	js, err = queue.Claim(ctx, pool, "w", []string{"ai_processing"}, nil, 5)
	if err != nil || len(js) != 1 || js[0].ID != ai.JobID {
		t.Fatalf("type filter: %v %v", js, err)
	}
}

// Concurrent enqueues with one idempotency key give one job; once that job
// has finished, the key can be used again.
func TestIdempotentEnqueueUnderRace(t *testing.T) {
	t.Parallel()
	pool := testdb.New(t)
	const callers = 40
	ids := make([]string, callers)
	errs := make([]error, callers)
	var wg sync.WaitGroup
	start := make(chan struct{})
	for i := 0; i < callers; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			<-start
			e, err := queue.Enqueue(ctx, pool, queue.EnqueueParams{JobType: "ai_processing", JobName: "upload",
				Payload: json.RawMessage(`{"storage_path":"x"}`), IdempotencyKey: "upload-123"})
			ids[i], errs[i] = e.JobID, err
		}(i)
	}
	close(start)
	wg.Wait()
	for i := range ids {
		if errs[i] != nil {
			t.Fatalf("caller %d: %v", i, errs[i])
		}
		if ids[i] != ids[0] {
			t.Fatalf("caller %d got job %s, caller 0 got %s", i, ids[i], ids[0])
		}
	}
	if c := count(t, pool, `SELECT count(*) FROM job_queue WHERE idempotency_key = 'upload-123'`); c != 1 {
		t.Fatalf("%d jobs with the key", c)
	}
	if c := count(t, pool, `SELECT count(*) FROM audit_log WHERE operation = 'ENQUEUE'`); c != 1 {
		t.Fatalf("%d ENQUEUE audit rows", c)
	}
	j := claimOne(t, pool, "w")
	if ok, err := queue.Complete(ctx, pool, j.Lease(), nil); !ok || err != nil {
		t.Fatal(ok, err)
	}
	e := enqueue(t, pool, queue.EnqueueParams{JobType: "ai_processing", IdempotencyKey: "upload-123"})
	if e.JobID == ids[0] {
		t.Fatal("a finished job's key returned the finished job")
	}
}

// Concurrent reclaimers with a short timeout: each stale job is reclaimed
// exactly once, fresh leases are untouched.
func TestReclaimConcurrentCallers(t *testing.T) {
	t.Parallel()
	pool := testdb.New(t)
	setConfig(t, pool, "worker.timeout_seconds", 1)
	setConfig(t, pool, "worker.reclaim_jitter_max_seconds", 0)
	if _, err := pool.Exec(ctx, `SELECT count(*) FROM generate_series(1, 300) g,
		LATERAL enqueue_job_v3('report_generation', 'r', jsonb_build_object('n', g), p_max_retries => 1 - (g % 2))`); err != nil {
		t.Fatal(err)
	}
	stale, err := queue.Claim(ctx, pool, "dead-worker", nil, nil, 200)
	if err != nil || len(stale) != 200 {
		t.Fatal(len(stale), err)
	}
	fresh, err := queue.Claim(ctx, pool, "live-worker", nil, nil, 100)
	if err != nil || len(fresh) != 100 {
		t.Fatal(len(fresh), err)
	}
	if _, err := pool.Exec(ctx, `UPDATE job_queue SET heartbeat_at = now() - interval '10 seconds' WHERE worker_id = 'dead-worker'`); err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	results := make([]queue.ReclaimResult, 8)
	errs := make([]error, 8)
	for i := range results {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			for {
				r, err := queue.Reclaim(ctx, pool, 7)
				if err != nil {
					errs[i] = err
					return
				}
				if r.Reclaimed+r.DeadLettered == 0 {
					return
				}
				results[i].Reclaimed += r.Reclaimed
				results[i].DeadLettered += r.DeadLettered
				results[i].JobIDs = append(results[i].JobIDs, r.JobIDs...)
			}
		}(i)
	}
	wg.Wait()
	all := map[string]bool{}
	var reclaimed, dead int
	for i, r := range results {
		if errs[i] != nil {
			t.Fatal(errs[i])
		}
		reclaimed += r.Reclaimed
		dead += r.DeadLettered
		for _, id := range r.JobIDs {
			if all[id] {
				t.Fatalf("job %s reclaimed twice", id)
			}
			all[id] = true
		}
	}
	if len(all) != 200 || reclaimed+dead != 200 {
		t.Fatalf("reclaimed %d + dead %d (%d distinct), want 200", reclaimed, dead, len(all))
	}
	// max_retries alternates 0/1: half of the stale jobs had no attempt left.
	if c := count(t, pool, `SELECT count(*) FROM job_queue_archive WHERE status = 'dead_letter'`); c != dead || dead == 0 || reclaimed == 0 {
		t.Fatalf("dead letters %d, reported %d, reclaimed %d", c, dead, reclaimed)
	}
	if c := count(t, pool, `SELECT count(*) FROM job_queue WHERE status = 'pending' AND retry_count = 1
		AND error_history -> 0 ->> 'error' LIKE 'lease expired%'`); c != reclaimed {
		t.Fatalf("%d pending reclaimed jobs with retry_count 1 and history, want %d", c, reclaimed)
	}
	if c := count(t, pool, `SELECT count(*) FROM job_queue WHERE status = 'processing' AND worker_id = 'live-worker'`); c != 100 {
		t.Fatalf("fresh leases touched: %d left of 100", c)
	}
	if c := count(t, pool, `SELECT count(*) FROM audit_log WHERE operation IN ('RECLAIM', 'DEAD_LETTER')`); c != 200 {
		t.Fatalf("%d reclaim audit rows, want 200", c)
	}
}

// Workers heartbeating in-flight jobs while reclaim runs: a job whose lease
// is kept is never reclaimed. Jobs whose holder crashed are.
func TestReclaimSparesHeartbeatingJobs(t *testing.T) {
	t.Parallel()
	pool := testdb.New(t)
	setConfig(t, pool, "worker.timeout_seconds", 1)
	setConfig(t, pool, "worker.reclaim_jitter_max_seconds", 0)
	for i := 0; i < 20; i++ {
		enqueue(t, pool, queue.EnqueueParams{})
	}
	live, err := queue.Claim(ctx, pool, "live", nil, nil, 10)
	if err != nil || len(live) != 10 {
		t.Fatal(err)
	}
	if _, err := queue.Claim(ctx, pool, "crashed", nil, nil, 10); err != nil {
		t.Fatal(err)
	}
	if _, err := pool.Exec(ctx, `UPDATE job_queue SET heartbeat_at = now() - interval '5 seconds'`); err != nil {
		t.Fatal(err)
	}
	leases := make([]queue.Lease, len(live))
	for i, j := range live {
		leases[i] = j.Lease()
	}
	lost, err := queue.Heartbeat(ctx, pool, "live", leases)
	if err != nil || len(lost) != 0 {
		t.Fatalf("lost %v err %v", lost, err)
	}
	r, err := queue.Reclaim(ctx, pool, 100)
	if err != nil || r.Reclaimed != 10 {
		t.Fatalf("reclaim %+v %v", r, err)
	}
	for _, j := range live {
		if ok, err := queue.Complete(ctx, pool, j.Lease(), nil); !ok || err != nil {
			t.Fatalf("live holder could not complete: %v %v", ok, err)
		}
	}
}
