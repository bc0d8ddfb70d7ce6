package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"sync"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/riverqueue/river"
	"github.com/riverqueue/river/riverdriver/riverpgxv5"
	"github.com/riverqueue/river/rivermigrate"

	"github.com/v3ctl/v3ctl/internal/bench"
)

// riverSchema keeps River's tables apart from v3ctl's in the same database.
const riverSchema = "river"

type noopArgs struct {
	// T is the enqueue time (UnixNano) for pickup measurements; 0 in drains.
	T int64 `json:"t,omitempty"`
}

func (noopArgs) Kind() string { return "bench_noop" }

type noopWorker struct {
	river.WorkerDefaults[noopArgs]
	started func(enqueuedAt int64)
}

func (w *noopWorker) Work(_ context.Context, job *river.Job[noopArgs]) error {
	if w.started != nil && job.Args.T != 0 {
		w.started(job.Args.T)
	}
	return nil
}

func riverLogger() *slog.Logger {
	return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelError}))
}

// riverMigrate installs River's schema (its own migrations) into riverSchema.
func riverMigrate(ctx context.Context, pool *pgxpool.Pool) error {
	if _, err := pool.Exec(ctx, `CREATE SCHEMA IF NOT EXISTS `+riverSchema); err != nil {
		return err
	}
	m, err := rivermigrate.New(riverpgxv5.New(pool), &rivermigrate.Config{Schema: riverSchema, Logger: riverLogger()})
	if err != nil {
		return err
	}
	_, err = m.Migrate(ctx, rivermigrate.DirectionUp, nil)
	return err
}

// riverTuning is what "tuned fairly" means here: as many workers as v3ctl
// gets, a 1 ms fetch cooldown (River's minimum; default 100 ms) and a short
// poll interval (default 1 s) so neither LISTEN/NOTIFY misses nor the
// cooldown dominate.
type riverTuning struct {
	Workers           int
	FetchCooldown     time.Duration
	FetchPollInterval time.Duration
}

func (t riverTuning) config(w *noopWorker) *river.Config {
	workers := river.NewWorkers()
	river.AddWorker(workers, w)
	return &river.Config{
		Logger:            riverLogger(),
		Schema:            riverSchema,
		FetchCooldown:     t.FetchCooldown,
		FetchPollInterval: t.FetchPollInterval,
		Queues:            map[string]river.QueueConfig{river.QueueDefault: {MaxWorkers: t.Workers}},
		Workers:           workers,
	}
}

func riverReset(ctx context.Context, pool *pgxpool.Pool) error {
	if _, err := pool.Exec(ctx, `TRUNCATE `+riverSchema+`.river_job`); err != nil {
		return err
	}
	_, err := pool.Exec(ctx, `VACUUM ANALYZE `+riverSchema+`.river_job`)
	return err
}

// riverDrain pre-inserts n jobs, then starts a client and times it from
// Start until every job's completion event has arrived (River emits the
// event after the completion is persisted).
func riverDrain(ctx context.Context, pool *pgxpool.Pool, n int, t riverTuning) (bench.Rate, error) {
	if err := riverReset(ctx, pool); err != nil {
		return bench.Rate{}, err
	}
	w := &noopWorker{}
	client, err := river.NewClient(riverpgxv5.New(pool), t.config(w))
	if err != nil {
		return bench.Rate{}, err
	}
	params := make([]river.InsertManyParams, 0, 5000)
	for left := n; left > 0; {
		k := min(left, 5000)
		params = params[:0]
		for range k {
			params = append(params, river.InsertManyParams{Args: noopArgs{}})
		}
		if _, err := client.InsertManyFast(ctx, params); err != nil {
			return bench.Rate{}, fmt.Errorf("river insert: %w", err)
		}
		left -= k
	}
	if _, err := pool.Exec(ctx, `ANALYZE `+riverSchema+`.river_job`); err != nil {
		return bench.Rate{}, err
	}
	events, cancel := client.SubscribeConfig(&river.SubscribeConfig{ChanSize: n + 1024, Kinds: []river.EventKind{river.EventKindJobCompleted}})
	defer cancel()
	start := time.Now()
	if err := client.Start(ctx); err != nil {
		return bench.Rate{}, err
	}
	defer func() {
		sctx, c := context.WithTimeout(context.Background(), 30*time.Second)
		defer c()
		_ = client.Stop(sctx)
	}()
	timeout := time.After(10 * time.Minute)
	for done := 0; done < n; {
		select {
		case <-events:
			done++
		case <-timeout:
			return bench.Rate{}, fmt.Errorf("river drain: only %d of %d completed after 10 minutes", done, n)
		case <-ctx.Done():
			return bench.Rate{}, ctx.Err()
		}
	}
	elapsed := time.Since(start)
	var completed int
	if err := pool.QueryRow(ctx, `SELECT count(*) FROM `+riverSchema+`.river_job WHERE state = 'completed'`).Scan(&completed); err != nil {
		return bench.Rate{}, err
	}
	if completed != n {
		return bench.Rate{}, fmt.Errorf("river drain: %d completed rows, want %d", completed, n)
	}
	return bench.NewRate(n, elapsed, t.Workers), nil
}

// riverPickup measures enqueue -> handler start on an idle client: one job
// at a time, a short random pause between jobs so every job meets idle
// workers.
func riverPickup(ctx context.Context, pool *pgxpool.Pool, samples int, t riverTuning) (bench.Latency, error) {
	if err := riverReset(ctx, pool); err != nil {
		return bench.Latency{}, err
	}
	got := make(chan time.Duration, 1)
	var mu sync.Mutex
	w := &noopWorker{started: func(at int64) {
		d := time.Since(time.Unix(0, at))
		mu.Lock()
		defer mu.Unlock()
		select {
		case got <- d:
		default:
		}
	}}
	client, err := river.NewClient(riverpgxv5.New(pool), t.config(w))
	if err != nil {
		return bench.Latency{}, err
	}
	if err := client.Start(ctx); err != nil {
		return bench.Latency{}, err
	}
	defer func() {
		sctx, c := context.WithTimeout(context.Background(), 30*time.Second)
		defer c()
		_ = client.Stop(sctx)
	}()
	time.Sleep(500 * time.Millisecond) // let the producer start listening
	ds := make([]time.Duration, 0, samples)
	for i := 0; i < samples; i++ {
		if _, err := client.Insert(ctx, noopArgs{T: time.Now().UnixNano()}, nil); err != nil {
			return bench.Latency{}, err
		}
		select {
		case d := <-got:
			ds = append(ds, d)
		case <-time.After(30 * time.Second):
			return bench.Latency{}, errors.New("river pickup: a job was not started within 30s")
		case <-ctx.Done():
			return bench.Latency{}, ctx.Err()
		}
		time.Sleep(pause(i))
	}
	return bench.Summarize(ds), nil
}

// pause is the idle gap between pickup samples: 10-29 ms, deterministic.
func pause(i int) time.Duration { return time.Duration(10+(i*7)%20) * time.Millisecond }
