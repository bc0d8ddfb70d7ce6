package bench

import (
	"context"
	"testing"
	"time"

	"github.com/v3ctl/v3ctl/internal/testdb"
)

func TestSummarize(t *testing.T) {
	var ds []time.Duration
	for i := 100; i >= 1; i-- {
		ds = append(ds, time.Duration(i)*time.Millisecond)
	}
	l := Summarize(ds)
	if l.Samples != 100 || l.P50 != 50 || l.P95 != 95 || l.P99 != 99 || l.Max != 100 || l.Mean != 50.5 {
		t.Fatalf("Summarize = %+v", l)
	}
	if (Summarize(nil) != Latency{}) {
		t.Fatal("empty input must give a zero Latency")
	}
}

func TestThrowaway(t *testing.T) {
	ctx := context.Background()
	for dsn, want := range map[string]bool{
		"postgres://u@127.0.0.1:1/v3ctl_t_x":          true,
		"postgres://u@db.example.com:5432/bench_run":  false, // remote: needs --yes
		"postgres://u@localhost:5432/bench_run":       true,
		"postgres://u@db.example.com:5432/postgres":   false,
		"postgres://u:pw@prod.example.com/v3":         false,
		"host=10.0.0.1 port=5432 dbname=app user=x":   false,
		"postgres://u@127.0.0.1:1/v3?sslmode=disable": false, // no instance listens on port 1
	} {
		if got, why := Throwaway(ctx, dsn); got != want {
			t.Errorf("Throwaway(%s) = %v (%s), want %v", dsn, got, why, want)
		}
	}
}

func TestDrainCompletesEveryJob(t *testing.T) {
	for _, mode := range Modes {
		t.Run(mode, func(t *testing.T) { testDrain(t, mode) })
	}
}

func testDrain(t *testing.T, mode string) {
	pool := testdb.New(t)
	ctx := context.Background()
	r, err := Drain(ctx, pool, DrainOptions{Jobs: 300, Workers: 4, Batch: 7, Mode: mode})
	if err != nil {
		t.Fatal(err)
	}
	if r.Ops != 300 || r.PerSecond <= 0 {
		t.Fatalf("drain result %+v", r)
	}
	// Reset ran: nothing of the bench is left behind.
	var left int
	if err := pool.QueryRow(ctx, `SELECT (SELECT count(*) FROM public.job_queue) + (SELECT count(*) FROM public.job_queue_archive WHERE job_name = $1)`, JobName).Scan(&left); err != nil {
		t.Fatal(err)
	}
	if left != 0 {
		t.Fatalf("%d bench jobs left behind", left)
	}
	// Every job was claimed and completed exactly once (audit trail).
	var claims, completes int
	if err := pool.QueryRow(ctx, `SELECT count(*) FILTER (WHERE operation = 'CLAIM'), count(*) FILTER (WHERE operation = 'COMPLETE')
FROM public.audit_log WHERE table_name = 'job_queue'`).Scan(&claims, &completes); err != nil {
		t.Fatal(err)
	}
	if claims != 300 || completes != 300 {
		t.Fatalf("audit: %d claims, %d completions, want 300 each", claims, completes)
	}
}

func TestDrainRefusesForeignJobs(t *testing.T) {
	pool := testdb.New(t)
	ctx := context.Background()
	if err := FillJobs(ctx, pool, JobType, "someone-elses-job", 1, 3); err != nil {
		t.Fatal(err)
	}
	if _, err := Drain(ctx, pool, DrainOptions{Jobs: 10, Workers: 1}); err == nil {
		t.Fatal("drain ran although a non-bench job of the bench type was pending")
	}
	var n int
	if err := pool.QueryRow(ctx, `SELECT count(*) FROM public.job_queue WHERE job_name = 'someone-elses-job' AND status = 'pending'`).Scan(&n); err != nil || n != 1 {
		t.Fatalf("the foreign job was touched: %d pending, %v", n, err)
	}
}

func TestPickupAndClaimAtDepth(t *testing.T) {
	pool := testdb.New(t)
	ctx := context.Background()
	for _, mode := range Modes {
		l, err := Pickup(ctx, pool, PickupOptions{Samples: 20, Workers: 2, Mode: mode})
		if err != nil {
			t.Fatalf("%s: %v", mode, err)
		}
		if l.Samples != 20 || l.P50 <= 0 {
			t.Fatalf("%s pickup %+v", mode, l)
		}
	}
	c, err := ClaimAtDepth(ctx, pool, ClaimOptions{Pending: 2000, Samples: 30})
	if err != nil {
		t.Fatal(err)
	}
	if c.Pending != 2000 || c.Latency.Samples != 30 {
		t.Fatalf("claim %+v", c)
	}
}

func TestCapacityPairsLeakNothing(t *testing.T) {
	pool := testdb.New(t)
	ctx := context.Background()
	r, err := Capacity(ctx, pool, CapacityOptions{Callers: 8, Duration: 500 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	if r.Ops == 0 {
		t.Fatalf("no acquire+release pair completed: %+v", r)
	}
	if r.Refused != 0 {
		t.Fatalf("%d acquisitions refused with one hold per caller allowed", r.Refused)
	}
	var live int
	if err := pool.QueryRow(ctx, `SELECT count(*) FROM public.api_capacity_holds h JOIN public.api_rate_limits l ON l.id = h.limit_id
WHERE l.provider_name = $1`, BenchProvider).Scan(&live); err != nil {
		t.Fatal(err)
	}
	if live != 0 {
		t.Fatalf("%d holds leaked", live)
	}
}

func TestUsageIsIdempotent(t *testing.T) {
	pool := testdb.New(t)
	r, err := Usage(context.Background(), pool, UsageOptions{Events: 200, Workers: 4})
	if err != nil {
		t.Fatal(err)
	}
	if r.Recorded != 200 || r.Calls != 400 {
		t.Fatalf("usage %+v", r)
	}
}

func TestUpdateRate(t *testing.T) {
	pool := testdb.New(t)
	r, err := UpdateRate(context.Background(), pool, UpdateRateOptions{Conns: 2, Duration: 300 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	if r.Ops == 0 || r.SynchronousCommit == "" {
		t.Fatalf("update rate %+v", r)
	}
}
