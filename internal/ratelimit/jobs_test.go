package ratelimit_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/v3ctl/v3ctl/internal/queue"
	"github.com/v3ctl/v3ctl/internal/ratelimit"
	"github.com/v3ctl/v3ctl/internal/testdb"
)

// claimJob enqueues and claims one lane-less job as worker w1.
func claimJob(t *testing.T, pool *pgxpool.Pool) queue.Job {
	t.Helper()
	ctx := context.Background()
	if _, err := queue.Enqueue(ctx, pool, queue.EnqueueParams{JobType: "report_generation", JobName: "rl-test", Payload: []byte(`{"report":"x"}`)}); err != nil {
		t.Fatal(err)
	}
	jobs, err := queue.Claim(ctx, pool, "w1", []string{"report_generation"}, nil, 1)
	if err != nil || len(jobs) != 1 {
		t.Fatalf("claim: %v %v", jobs, err)
	}
	return jobs[0]
}

func acquireFor(t *testing.T, pool *pgxpool.Pool, j queue.Job, hold time.Duration) ratelimit.Grant {
	t.Helper()
	g, err := ratelimit.Acquire(context.Background(), pool, ratelimit.Request{
		Provider: "test", Endpoint: "job", EstimatedTokens: 10, JobID: j.ID, LeaseToken: j.LeaseToken, Hold: hold})
	if err != nil {
		t.Fatal(err)
	}
	return g
}

// Capacity held for a job comes back by itself with every way a job's
// processing ends, in the same transaction.
func TestJobTiedHoldEndsWithJob(t *testing.T) {
	pool := testdb.New(t)
	ctx := context.Background()
	addLimit(t, pool, "job", 1000, nil, 1, 60)
	ends := map[string]func(j queue.Job) error{
		"complete": func(j queue.Job) error {
			_, err := queue.Complete(ctx, pool, j.Lease(), nil)
			return err
		},
		"complete with others (complete_jobs_v3)": func(j queue.Job) error {
			// Completed together with a job of its own worker that holds nothing.
			if _, err := queue.Enqueue(ctx, pool, queue.EnqueueParams{JobType: "report_generation", JobName: "other",
				Payload: []byte(`{"n":2}`)}); err != nil {
				return err
			}
			others, err := queue.Claim(ctx, pool, j.Lease().WorkerID, []string{"report_generation"}, nil, 1)
			if err != nil || len(others) != 1 {
				return fmt.Errorf("claim the other job: %d, %v", len(others), err)
			}
			ok, err := queue.CompleteMany(ctx, pool, []queue.Completion{{Lease: j.Lease()}, {Lease: others[0].Lease()}})
			if err == nil && (!ok[0] || !ok[1]) {
				err = fmt.Errorf("complete_jobs_v3 answered %v", ok)
			}
			return err
		},
		"fail": func(j queue.Job) error {
			_, err := queue.Fail(ctx, pool, j.Lease(), "vendor error", true)
			return err
		},
		"reschedule": func(j queue.Job) error {
			_, err := queue.Reschedule(ctx, pool, j.Lease(), time.Minute, "backpressure")
			return err
		},
		"release": func(j queue.Job) error {
			_, err := queue.Release(ctx, pool, j.Lease())
			return err
		},
		"cancel": func(j queue.Job) error {
			_, err := queue.Cancel(ctx, pool, j.ID, "test", "tester")
			return err
		},
		"reclaim": func(j queue.Job) error {
			if _, err := pool.Exec(ctx, `UPDATE public.job_queue SET heartbeat_at = now() - interval '2 hours' WHERE id = $1`, j.ID); err != nil {
				return err
			}
			_, err := queue.Reclaim(ctx, pool, 10)
			return err
		},
	}
	for name, end := range ends {
		j := claimJob(t, pool)
		// A long lease: only the job's end can free it in this test.
		g := acquireFor(t, pool, j, time.Hour)
		if !g.Granted {
			t.Fatalf("%s: job-tied acquire refused: %+v", name, g)
		}
		if o := acquire(t, pool, "job", 0); o.Granted || o.Reason != ratelimit.ReasonConcurrency {
			t.Fatalf("%s: while the job holds the only slot: %+v", name, o)
		}
		if err := end(j); err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		var n int
		var reason string
		if err := pool.QueryRow(ctx, `SELECT (SELECT count(*) FROM public.api_capacity_holds), release_reason
			FROM public.api_capacity_ledger WHERE id = $1`, g.HoldID).Scan(&n, &reason); err != nil {
			t.Fatal(err)
		}
		if n != 0 || reason != "job_released" {
			t.Fatalf("%s: %d holds left, ledger reason %q; want the hook to end the hold", name, n, reason)
		}
		o := acquire(t, pool, "job", 0)
		if !o.Granted {
			t.Fatalf("%s: capacity not back after the job ended: %+v", name, o)
		}
		if _, err := ratelimit.Release(ctx, pool, o.HoldID, 0); err != nil {
			t.Fatal(err)
		}
	}
}

func TestJobTiedFencing(t *testing.T) {
	pool := testdb.New(t)
	ctx := context.Background()
	addLimit(t, pool, "job", 1000, nil, 5, 60)
	j := claimJob(t, pool)

	wrong := j
	wrong.LeaseToken = "00000000-0000-0000-0000-0000000000aa"
	if g := acquireFor(t, pool, wrong, 0); g.Granted || g.Reason != ratelimit.ReasonJobNotHeld || !g.Permanent() {
		t.Fatalf("stale lease token: %+v, want job_not_held", g)
	}
	// Without a token the job's current lease is recorded.
	noTok := j
	noTok.LeaseToken = ""
	g := acquireFor(t, pool, noTok, 0)
	if !g.Granted {
		t.Fatalf("without a token: %+v", g)
	}
	var tok string
	if err := pool.QueryRow(ctx, `SELECT lease_token::text FROM public.api_capacity_holds WHERE id = $1`, g.HoldID).Scan(&tok); err != nil || tok != j.LeaseToken {
		t.Fatalf("hold lease %q (%v), want the job's %q", tok, err, j.LeaseToken)
	}
	// A pending job is not held by anyone.
	if _, err := queue.Enqueue(ctx, pool, queue.EnqueueParams{JobType: "report_generation", JobName: "pending", Payload: []byte(`{"report":"y"}`)}); err != nil {
		t.Fatal(err)
	}
	var pending string
	if err := pool.QueryRow(ctx, `SELECT id::text FROM public.job_queue WHERE status = 'pending'`).Scan(&pending); err != nil {
		t.Fatal(err)
	}
	if g := acquireFor(t, pool, queue.Job{ID: pending}, 0); g.Granted || g.Reason != ratelimit.ReasonJobNotHeld {
		t.Fatalf("pending job: %+v", g)
	}
	// A finished (archived) job: refused, not an error.
	if _, err := queue.Complete(ctx, pool, j.Lease(), nil); err != nil {
		t.Fatal(err)
	}
	if g := acquireFor(t, pool, j, 0); g.Granted || g.Reason != ratelimit.ReasonJobNotHeld {
		t.Fatalf("completed job: %+v", g)
	}
	// An unknown job is bad input.
	_, err := ratelimit.Acquire(ctx, pool, ratelimit.Request{Provider: "test", Endpoint: "job", JobID: "00000000-0000-0000-0000-0000000000bb"})
	if pgCode(err) != "22023" {
		t.Fatalf("unknown job: %v", err)
	}
}

// A job-tied hold lives while the job heartbeats, and dies one lease after
// the heartbeats stop (a crashed worker), long before the job itself is
// reclaimed; it also dies at once when the job's lease passes to someone
// else, even if no hook ran.
func TestJobTiedHoldFollowsHeartbeat(t *testing.T) {
	pool := testdb.New(t)
	ctx := context.Background()
	addLimit(t, pool, "job", 1000, nil, 1, 60)
	j := claimJob(t, pool)
	g := acquireFor(t, pool, j, time.Second)
	if !g.Granted {
		t.Fatal(g)
	}
	sleepUntilServer(t, pool, g.ExpiresAt)
	if ok, err := queue.HeartbeatOne(ctx, pool, j.Lease()); err != nil || !ok {
		t.Fatalf("heartbeat: %v %v", ok, err)
	}
	if o := acquire(t, pool, "job", 0); o.Granted {
		t.Fatalf("the heartbeat should keep the job's hold alive past expires_at: %+v", o)
	}
	lost, err := ratelimit.Extend(ctx, pool, []string{g.HoldID}, 0)
	if err != nil || len(lost) != 0 {
		t.Fatalf("extend a live job-tied hold: lost %v %v", lost, err)
	}
	// The worker dies: no more heartbeats. One lease later the slot is back,
	// while the job is still 'processing' (reclaim comes much later).
	var hb time.Time
	if err := pool.QueryRow(ctx, `SELECT greatest(h.expires_at, j.heartbeat_at + interval '1 second') FROM public.api_capacity_holds h
		JOIN public.job_queue j ON j.id = h.job_id WHERE h.id = $1`, g.HoldID).Scan(&hb); err != nil {
		t.Fatal(err)
	}
	sleepUntilServer(t, pool, hb)
	o := acquire(t, pool, "job", 0)
	if !o.Granted {
		t.Fatalf("one lease after the last heartbeat: %+v", o)
	}
	var st, reason string
	if err := pool.QueryRow(ctx, `SELECT (SELECT status FROM public.job_queue WHERE id = $1), release_reason
		FROM public.api_capacity_ledger WHERE id = $2`, j.ID, g.HoldID).Scan(&st, &reason); err != nil {
		t.Fatal(err)
	}
	if st != "processing" || reason != "expired" {
		t.Fatalf("job %s, hold %s; want the job still processing and the hold expired", st, reason)
	}
	if _, err := ratelimit.Release(ctx, pool, o.HoldID, 0); err != nil {
		t.Fatal(err)
	}

	// The job's lease changes hands without the hook (e.g. an operator's
	// UPDATE): its hold stops counting at once.
	j2 := claimJob(t, pool)
	g2 := acquireFor(t, pool, j2, time.Hour)
	if !g2.Granted {
		t.Fatal(g2)
	}
	if _, err := pool.Exec(ctx, `UPDATE public.job_queue SET lease_token = gen_random_uuid() WHERE id = $1`, j2.ID); err != nil {
		t.Fatal(err)
	}
	if o := acquire(t, pool, "job", 0); !o.Granted {
		t.Fatalf("after the job's lease changed hands: %+v", o)
	}
	if err := pool.QueryRow(ctx, `SELECT release_reason FROM public.api_capacity_ledger WHERE id = $1`, g2.HoldID).Scan(&reason); err != nil || reason != "lease_lost" {
		t.Fatalf("ledger reason %q %v, want lease_lost", reason, err)
	}
	if lost, err := ratelimit.Extend(ctx, pool, []string{g2.HoldID}, 0); err != nil || len(lost) != 1 {
		t.Fatalf("extend a lost hold: lost %v %v", lost, err)
	}
}
