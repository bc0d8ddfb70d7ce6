package queue_test

import (
	"fmt"
	"os"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/v3ctl/v3ctl/internal/queue"
	"github.com/v3ctl/v3ctl/internal/testdb"
)

// Benchmarks (figures in docs/queue.md):
//
//	go test -run '^$' -bench . -benchtime 2000x ./internal/queue/
//	V3CTL_BENCH_LARGE=1 go test -run '^$' -bench ClaimLatency -benchtime 2000x ./internal/queue/   # adds 1M pending

// fillPending inserts n due pending jobs in one statement (bypassing
// enqueue_job_v3 and its audit rows: this is setup, not what is measured).
func fillPending(b *testing.B, pool *pgxpool.Pool, n int) {
	b.Helper()
	// 1 job in 100 is an ai_processing job (for the filtered claim).
	if _, err := pool.Exec(ctx, `INSERT INTO public.job_queue (job_type, job_lane, job_name, job_payload, priority, scheduled_at, created_at)
		SELECT CASE WHEN g % 100 = 0 THEN 'ai_processing' ELSE 'report_generation' END,
		       CASE WHEN g % 100 = 0 THEN 'ai_queue_simple' END,
		       'bench', jsonb_build_object('n', g), 1 + (g % 10),
		       now() - interval '1 hour' + (g % 3600) * interval '1 second', now()
		FROM generate_series(1, $1) g`, n); err != nil {
		b.Fatal(err)
	}
	if _, err := pool.Exec(ctx, `VACUUM ANALYZE public.job_queue`); err != nil {
		b.Fatal(err)
	}
}

// Claim + complete throughput with 8 concurrent workers (batch sizes 1 and 10).
func BenchmarkClaimComplete(b *testing.B) {
	for _, batch := range []int{1, 10} {
		b.Run(fmt.Sprintf("batch=%d", batch), func(b *testing.B) {
			pool := testdb.New(b)
			fillPending(b, pool, b.N+batch*8)
			const workers = 8
			var done atomic.Int64
			var wg sync.WaitGroup
			errs := make(chan error, workers)
			b.ResetTimer()
			start := time.Now()
			for w := 0; w < workers; w++ {
				wg.Add(1)
				go func(w int) {
					defer wg.Done()
					worker := fmt.Sprintf("bench-%d", w)
					for done.Load() < int64(b.N) {
						js, err := queue.Claim(ctx, pool, worker, nil, nil, batch)
						if err != nil {
							errs <- err
							return
						}
						for _, j := range js {
							if ok, err := queue.Complete(ctx, pool, j.Lease(), nil); err != nil || !ok {
								errs <- fmt.Errorf("complete: %v %v", ok, err)
								return
							}
							done.Add(1)
						}
					}
				}(w)
			}
			wg.Wait()
			el := time.Since(start)
			b.StopTimer()
			close(errs)
			for err := range errs {
				b.Fatal(err)
			}
			b.ReportMetric(float64(done.Load())/el.Seconds(), "jobs/s")
		})
	}
}

// Latency of claiming one job from a queue of N due pending jobs, of any
// type or of a type that is 1 % of the backlog (the job is released
// afterwards, untimed, so N stays constant).
func BenchmarkClaimLatency(b *testing.B) {
	sizes := []int{10_000}
	if os.Getenv("V3CTL_BENCH_LARGE") != "" {
		sizes = append(sizes, 1_000_000)
	}
	for _, n := range sizes {
		pool := testdb.New(b)
		fillPending(b, pool, n)
		for _, filter := range []string{"any", "ai_processing"} {
			b.Run(fmt.Sprintf("pending=%d/type=%s", n, filter), func(b *testing.B) {
				var types []string
				if filter != "any" {
					types = []string{filter}
				}
				b.ResetTimer()
				for i := 0; i < b.N; i++ {
					js, err := queue.Claim(ctx, pool, "bench", types, nil, 1)
					if err != nil || len(js) != 1 {
						b.Fatalf("claim: %v %v", js, err)
					}
					b.StopTimer()
					if ok, err := queue.Release(ctx, pool, js[0].Lease()); err != nil || !ok {
						b.Fatalf("release: %v %v", ok, err)
					}
					b.StartTimer()
				}
			})
		}
	}
}
