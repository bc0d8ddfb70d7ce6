package bench

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/v3ctl/v3ctl/internal/handlers"
	"github.com/v3ctl/v3ctl/internal/worker"
)

// Modes of the v3ctl side of drain and pickup.
const (
	// ModeWorker runs the real worker loop (internal/worker, what
	// `v3ctl worker run` runs) in-process with a no-op Go handler.
	ModeWorker = "worker"
	// ModeBatch runs bare claim-batch / no-op / batch-complete loops on
	// the SQL API: what the queue functions allow, without the worker's
	// per-job transaction, heartbeats and bookkeeping.
	ModeBatch = "batch"
)

// Modes lists the valid modes.
var Modes = []string{ModeWorker, ModeBatch}

// startWorker runs an in-process worker over pool claiming bench jobs with
// concurrency slots; every job runs onJob. stop cancels it and waits.
func startWorker(ctx context.Context, pool *pgxpool.Pool, concurrency int, onJob func(handlers.Job)) (stop func(), err error) {
	cfg := worker.Config{
		DatabaseURL:       pool.Config().ConnString(),
		WorkerID:          workerID(9000),
		Concurrency:       concurrency,
		Types:             []string{JobType},
		PollInterval:      time.Second,
		ShutdownGrace:     5 * time.Second,
		HeartbeatInterval: 30 * time.Second,
		ReclaimInterval:   -1,
		DisableBuiltins:   true,
		Logger:            slog.New(slog.NewTextHandler(io.Discard, nil)),
	}
	w, err := worker.New(cfg, pool, map[string]handlers.Handler{
		JobType: handlers.Func(func(_ context.Context, j handlers.Job) (handlers.Result, error) {
			onJob(j)
			return handlers.Result{}, nil
		}),
	})
	if err != nil {
		return nil, err
	}
	wctx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- w.Run(wctx) }()
	return func() { cancel(); <-done }, nil
}

// workerDrain: jobs pre-inserted, then the real worker loop with
// o.Workers slots drains them.
func workerDrain(ctx context.Context, pool *pgxpool.Pool, o DrainOptions) (DrainResult, error) {
	var ran atomic.Int64
	all := make(chan struct{})
	start := time.Now()
	stop, err := startWorker(ctx, pool, o.Workers, func(handlers.Job) {
		if ran.Add(1) == int64(o.Jobs) {
			close(all)
		}
	})
	if err != nil {
		return DrainResult{}, err
	}
	defer stop()
	select {
	case <-all:
	case <-ctx.Done():
		return DrainResult{}, ctx.Err()
	case <-time.After(10 * time.Minute):
		return DrainResult{}, fmt.Errorf("worker drain: %d of %d jobs ran within 10 minutes", ran.Load(), o.Jobs)
	}
	// Every handler has run; wait for the last completions to commit.
	for {
		var left int
		if err := pool.QueryRow(ctx, `SELECT count(*) FROM public.job_queue WHERE job_type = $1 AND job_name = $2`, JobType, JobName).Scan(&left); err != nil {
			return DrainResult{}, err
		}
		if left == 0 {
			break
		}
		time.Sleep(2 * time.Millisecond)
	}
	elapsed := time.Since(start)
	return DrainResult{Rate: NewRate(o.Jobs, elapsed, o.Workers), Mode: "worker loop (internal/worker, as v3ctl worker run)"}, nil
}

// workerPickup: an idle worker with o.Workers slots; one job at a time.
func workerPickup(ctx context.Context, pool *pgxpool.Pool, o PickupOptions) (Latency, error) {
	started := make(chan time.Duration, o.Samples+o.Workers)
	stop, err := startWorker(ctx, pool, o.Workers, func(j handlers.Job) {
		var p struct {
			T int64 `json:"t"`
		}
		if json.Unmarshal(j.Payload, &p) == nil && p.T != 0 {
			started <- time.Since(time.Unix(0, p.T))
		}
	})
	if err != nil {
		return Latency{}, err
	}
	defer stop()
	time.Sleep(300 * time.Millisecond) // LISTEN established
	return pickupSamples(ctx, pool, o.Samples, started)
}

// pickupSamples enqueues one job at a time (its payload carries the
// enqueue time) and collects the handler-start delays.
func pickupSamples(ctx context.Context, pool *pgxpool.Pool, samples int, started <-chan time.Duration) (Latency, error) {
	ds := make([]time.Duration, 0, samples)
	for i := 0; i < samples; i++ {
		t := time.Now().UnixNano()
		payload, _ := json.Marshal(map[string]int64{"t": t})
		if _, err := pool.Exec(ctx, `SELECT public.enqueue_job_v3($1, $2, $3::jsonb, 'maintenance', 5)`, JobType, JobName, string(payload)); err != nil {
			return Latency{}, err
		}
		select {
		case d := <-started:
			ds = append(ds, d)
		case <-time.After(30 * time.Second):
			return Latency{}, errors.New("pickup: a job was not started within 30s")
		case <-ctx.Done():
			return Latency{}, ctx.Err()
		}
		time.Sleep(time.Duration(10+(i*7)%20) * time.Millisecond)
	}
	return Summarize(ds), nil
}
