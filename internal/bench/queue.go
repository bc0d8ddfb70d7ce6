package bench

import (
	"context"
	"fmt"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/v3ctl/v3ctl/internal/queue"
	"golang.org/x/sync/errgroup"
)

// Bench jobs are ordinary jobs of a lane-less type with a recognisable name;
// claims filter on the type, so a benchmark refuses to run while other jobs
// of that type are pending (see CheckQueueFree).
const (
	JobType = "system_maintenance"
	JobName = "v3ctl-bench"
)

// DrainOptions configure a queue drain.
type DrainOptions struct {
	// Jobs pre-inserted before the clock starts.
	Jobs int `json:"jobs"`
	// Workers is the number of concurrent handlers.
	Workers int `json:"workers"`
	// Mode is ModeWorker (default) or ModeBatch.
	Mode string `json:"mode"`
	// Batch (ModeBatch) is how many jobs one claim takes (default 8);
	// completions of a batch are pipelined in one round trip.
	Batch int `json:"batch,omitempty"`
}

// DrainResult is a drain measurement.
type DrainResult struct {
	Rate
	Mode string `json:"mode"`
}

// PickupOptions configure a pickup-latency run.
type PickupOptions struct {
	Samples int `json:"samples"`
	Workers int `json:"workers"`
	// Mode is ModeWorker (default) or ModeBatch (listening claimers).
	Mode string `json:"mode"`
}

// ClaimOptions configure a claim-latency run at a given queue depth.
type ClaimOptions struct {
	Pending int `json:"pending"`
	Samples int `json:"samples"`
}

// ClaimLatency is the latency of one claim (of one job) with Pending jobs
// waiting.
type ClaimLatency struct {
	Pending  int     `json:"pending"`
	FillSecs float64 `json:"fill_seconds"`
	Latency  Latency `json:"latency"`
}

// CheckQueueFree refuses to benchmark while jobs other than bench jobs of the
// bench job type are pending or running: claims would take them.
func CheckQueueFree(ctx context.Context, pool *pgxpool.Pool) error {
	var n int
	err := pool.QueryRow(ctx, `SELECT count(*) FROM public.job_queue WHERE job_type = $1 AND job_name <> $2`, JobType, JobName).Scan(&n)
	if err != nil {
		return err
	}
	if n > 0 {
		return fmt.Errorf("%d unfinished %s jobs that are not bench jobs are in the queue; a benchmark would claim them: run it on a dev or throwaway database", n, JobType)
	}
	return nil
}

// Reset removes bench jobs left in the queue and the archive.
func Reset(ctx context.Context, pool *pgxpool.Pool) error {
	if _, err := pool.Exec(ctx, `DELETE FROM public.job_queue WHERE job_type = $1 AND job_name = $2`, JobType, JobName); err != nil {
		return err
	}
	if _, err := pool.Exec(ctx, `DELETE FROM public.job_queue_archive WHERE job_type = $1 AND job_name = $2`, JobType, JobName); err != nil {
		return err
	}
	_, err := pool.Exec(ctx, `VACUUM ANALYZE public.job_queue`)
	return err
}

// Fill enqueues n bench jobs through enqueue_job_v3 (see FillJobs).
func Fill(ctx context.Context, pool *pgxpool.Pool, n int, maxRetries int) error {
	return FillJobs(ctx, pool, JobType, JobName, n, maxRetries)
}

// FillJobs enqueues n jobs of the given type and name through
// enqueue_job_v3 (the real function: validation, audit row, NOTIFY), in
// server-side loops of 20k per statement on two connections, then analyzes
// the table. Payloads are {"n": i}.
func FillJobs(ctx context.Context, pool *pgxpool.Pool, jobType, jobName string, n int, maxRetries int) error {
	const chunk = 20000
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(2)
	for start := 0; start < n; start += chunk {
		k := min(chunk, n-start)
		g.Go(func() error {
			_, err := pool.Exec(gctx, `SELECT count(e.job_id) FROM pg_catalog.generate_series($5::int, $5::int + $1::int - 1) g,
  LATERAL public.enqueue_job_v3($2, $3, pg_catalog.jsonb_build_object('n', g), 'maintenance', 5,
                                p_max_retries => $4) e`, k, jobType, jobName, maxRetries, start+1)
			return err
		})
	}
	if err := g.Wait(); err != nil {
		return fmt.Errorf("enqueue %d %s jobs: %w", n, jobType, err)
	}
	_, err := pool.Exec(ctx, `ANALYZE public.job_queue`)
	return err
}

type claimed struct {
	ID    string
	Token string
	T     int64
}

const claimSQL = `SELECT id::text, lease_token::text, coalesce((job_payload->>'t')::bigint, 0)
FROM public.claim_jobs_v3($1, ARRAY[$2]::text[], NULL, $3)`

func claim(ctx context.Context, q interface {
	Query(context.Context, string, ...any) (pgx.Rows, error)
}, worker string, limit int) ([]claimed, error) {
	rows, err := q.Query(ctx, claimSQL, worker, JobType, limit)
	if err != nil {
		return nil, err
	}
	return pgx.CollectRows(rows, func(r pgx.CollectableRow) (claimed, error) {
		var c claimed
		err := r.Scan(&c.ID, &c.Token, &c.T)
		return c, err
	})
}

// completeAll completes the jobs with queue.CompleteMany (complete_jobs_v3:
// one set-based call, one transaction) and returns how many were completed.
func completeAll(ctx context.Context, conn *pgxpool.Conn, worker string, jobs []claimed) (int, error) {
	cs := make([]queue.Completion, len(jobs))
	for i, j := range jobs {
		cs[i] = queue.Completion{Lease: queue.Lease{JobID: j.ID, WorkerID: worker, Token: j.Token}}
	}
	oks, err := queue.CompleteMany(ctx, conn, cs)
	n := 0
	for _, ok := range oks {
		if ok {
			n++
		}
	}
	return n, err
}

func workerID(i int) string { return fmt.Sprintf("bench-%d-%d", os.Getpid(), i) }

// Drain pre-inserts o.Jobs bench jobs, then times o.Workers concurrent
// claim-batch / no-op / complete loops until every job is completed.
func Drain(ctx context.Context, pool *pgxpool.Pool, o DrainOptions) (DrainResult, error) {
	if o.Batch <= 0 {
		o.Batch = 8
	}
	if err := CheckQueueFree(ctx, pool); err != nil {
		return DrainResult{}, err
	}
	if err := Reset(ctx, pool); err != nil {
		return DrainResult{}, err
	}
	if err := Fill(ctx, pool, o.Jobs, 3); err != nil {
		return DrainResult{}, err
	}
	switch o.Mode {
	case "", ModeWorker:
		r, err := workerDrain(ctx, pool, o)
		if err != nil {
			return r, err
		}
		return r, Reset(ctx, pool)
	case ModeBatch:
	default:
		return DrainResult{}, fmt.Errorf("unknown drain mode %q: use %s or %s", o.Mode, ModeWorker, ModeBatch)
	}
	var done atomic.Int64
	g, gctx := errgroup.WithContext(ctx)
	start := time.Now()
	for i := 0; i < o.Workers; i++ {
		g.Go(func() error {
			conn, err := pool.Acquire(gctx)
			if err != nil {
				return err
			}
			defer conn.Release()
			w := workerID(i)
			for done.Load() < int64(o.Jobs) {
				jobs, err := claim(gctx, conn, w, o.Batch)
				if err != nil {
					return err
				}
				if len(jobs) == 0 {
					// Others hold the rest; they will finish them.
					return nil
				}
				for range jobs {
					noop()
				}
				n, err := completeAll(gctx, conn, w, jobs)
				if err != nil {
					return err
				}
				done.Add(int64(n))
			}
			return nil
		})
	}
	if err := g.Wait(); err != nil {
		return DrainResult{}, err
	}
	elapsed := time.Since(start)
	if got := done.Load(); got != int64(o.Jobs) {
		return DrainResult{}, fmt.Errorf("drain: %d of %d jobs completed", got, o.Jobs)
	}
	res := DrainResult{Rate: NewRate(o.Jobs, elapsed, o.Workers), Mode: fmt.Sprintf("claim batch %d + batch complete", o.Batch)}
	return res, Reset(ctx, pool)
}

//go:noinline
func noop() {}

// Pickup measures enqueue -> handler start: o.Workers idle claimers wait
// for the v3_jobs notification; each sample enqueues one job (its payload
// carries the enqueue time) and waits until a handler has started it.
func Pickup(ctx context.Context, pool *pgxpool.Pool, o PickupOptions) (Latency, error) {
	if err := CheckQueueFree(ctx, pool); err != nil {
		return Latency{}, err
	}
	if err := Reset(ctx, pool); err != nil {
		return Latency{}, err
	}
	switch o.Mode {
	case "", ModeWorker:
		l, err := workerPickup(ctx, pool, o)
		if err != nil {
			return l, err
		}
		return l, Reset(ctx, pool)
	case ModeBatch:
	default:
		return Latency{}, fmt.Errorf("unknown pickup mode %q: use %s or %s", o.Mode, ModeWorker, ModeBatch)
	}
	started := make(chan time.Duration, o.Samples+o.Workers)
	stop, err := startListeningClaimers(ctx, pool, o.Workers, func(j claimed) {
		if j.T != 0 {
			started <- time.Since(time.Unix(0, j.T))
		}
	})
	if err != nil {
		return Latency{}, err
	}
	defer stop()
	l, err := pickupSamples(ctx, pool, o.Samples, started)
	if err != nil {
		return l, err
	}
	return l, Reset(ctx, pool)
}

// startListeningClaimers runs n claimers woken by NOTIFY v3_jobs (and a
// 1 s poll as a fallback). A wake-up goes to one idle claimer.
func startListeningClaimers(ctx context.Context, pool *pgxpool.Pool, n int, handle func(claimed)) (func(), error) {
	ctx, cancel := context.WithCancel(ctx)
	lconn, err := pool.Acquire(ctx)
	if err != nil {
		cancel()
		return nil, err
	}
	if _, err := lconn.Exec(ctx, `LISTEN v3_jobs`); err != nil {
		lconn.Release()
		cancel()
		return nil, err
	}
	wake := make(chan struct{}, n)
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		defer func() { _, _ = lconn.Exec(context.Background(), `UNLISTEN *`); lconn.Release() }()
		for {
			wctx, c := context.WithTimeout(ctx, time.Second)
			_, err := lconn.Conn().WaitForNotification(wctx)
			c()
			if ctx.Err() != nil {
				return
			}
			_ = err // timeout: poll anyway
			select {
			case wake <- struct{}{}:
			default:
			}
		}
	}()
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			w := workerID(1000 + i)
			for {
				select {
				case <-ctx.Done():
					return
				case <-wake:
				}
				for ctx.Err() == nil {
					conn, err := pool.Acquire(ctx)
					if err != nil {
						return
					}
					jobs, err := claim(ctx, conn, w, 1)
					if err != nil || len(jobs) == 0 {
						conn.Release()
						break
					}
					handle(jobs[0])
					_, _ = completeAll(ctx, conn, w, jobs)
					conn.Release()
				}
			}
		}()
	}
	return func() { cancel(); wg.Wait() }, nil
}

// ClaimAtDepth fills the queue to o.Pending bench jobs, then times o.Samples
// single claims (each followed by its completion, untimed).
func ClaimAtDepth(ctx context.Context, pool *pgxpool.Pool, o ClaimOptions) (ClaimLatency, error) {
	if o.Samples <= 0 {
		o.Samples = 200
	}
	res := ClaimLatency{Pending: o.Pending}
	if err := CheckQueueFree(ctx, pool); err != nil {
		return res, err
	}
	if err := Reset(ctx, pool); err != nil {
		return res, err
	}
	t0 := time.Now()
	if err := Fill(ctx, pool, o.Pending, 3); err != nil {
		return res, err
	}
	res.FillSecs = float64(time.Since(t0).Milliseconds()) / 1000
	conn, err := pool.Acquire(ctx)
	if err != nil {
		return res, err
	}
	defer conn.Release()
	w := workerID(0)
	// Warm up: plan caches, the index's first pages.
	for i := 0; i < 20; i++ {
		jobs, err := claim(ctx, conn, w, 1)
		if err != nil {
			return res, err
		}
		if _, err := completeAll(ctx, conn, w, jobs); err != nil {
			return res, err
		}
	}
	ds := make([]time.Duration, 0, o.Samples)
	for i := 0; i < o.Samples; i++ {
		t := time.Now()
		jobs, err := claim(ctx, conn, w, 1)
		d := time.Since(t)
		if err != nil {
			return res, err
		}
		if len(jobs) != 1 {
			return res, fmt.Errorf("claim at depth %d returned %d jobs", o.Pending, len(jobs))
		}
		ds = append(ds, d)
		if _, err := completeAll(ctx, conn, w, jobs); err != nil {
			return res, err
		}
	}
	res.Latency = Summarize(ds)
	return res, Reset(ctx, pool)
}
