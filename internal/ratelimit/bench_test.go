package ratelimit_test

import (
	"context"
	"fmt"
	"runtime"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/v3ctl/v3ctl/internal/ratelimit"
	"github.com/v3ctl/v3ctl/internal/testdb"
)

// benchPool opens a pool of 64 connections: one per concurrent caller.
func benchPool(b *testing.B) *pgxpool.Pool {
	b.Helper()
	cfg, err := pgxpool.ParseConfig(testdb.NewURL(b))
	if err != nil {
		b.Fatal(err)
	}
	cfg.MaxConns = 64
	pool, err := pgxpool.NewWithConfig(context.Background(), cfg)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(pool.Close)
	return pool
}

// runCallers runs b.N operations over exactly 64 goroutines.
func runCallers(b *testing.B, unit string, op func(i int64) error) {
	const callers = 64
	b.SetParallelism((callers + runtime.GOMAXPROCS(0) - 1) / runtime.GOMAXPROCS(0))
	var n atomic.Int64
	start := time.Now()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if err := op(n.Add(1)); err != nil {
				b.Error(err)
				return
			}
		}
	})
	b.StopTimer()
	b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), unit)
}

// BenchmarkAcquireRelease: acquire + release pairs with 64 concurrent callers
// on one provider/endpoint (every decision serialised by its lock) whose
// limits are high enough that every call is granted. Each release corrects
// the tokens (estimate 100, actual 80), the usual worker path.
//
//	go test -run '^$' -bench AcquireRelease -benchtime 10s ./internal/ratelimit/
func BenchmarkAcquireRelease(b *testing.B) {
	for _, endpoints := range []int{1, 4} {
		b.Run(fmt.Sprintf("endpoints=%d", endpoints), func(b *testing.B) {
			pool := benchPool(b)
			for e := 0; e < endpoints; e++ {
				addLimit(b, pool, fmt.Sprintf("bench%d", e), 2_000_000_000, ptr(2_000_000_000), 1_000_000, 60)
			}
			ctx := context.Background()
			runCallers(b, "pairs/s", func(i int64) error {
				ep := fmt.Sprintf("bench%d", i%int64(endpoints))
				g, err := ratelimit.Acquire(ctx, pool, ratelimit.Request{Provider: "test", Endpoint: ep, EstimatedTokens: 100})
				if err != nil {
					return err
				}
				if !g.Granted {
					return fmt.Errorf("refused: %+v", g)
				}
				_, err = ratelimit.Release(ctx, pool, g.HoldID, 80)
				return err
			})
		})
	}
}

// BenchmarkRefusalStorm: 64 callers asking an exhausted provider/endpoint
// (a 429 storm): refusals per second, each counted in a sharded row.
//
//	go test -run '^$' -bench RefusalStorm ./internal/ratelimit/
func BenchmarkRefusalStorm(b *testing.B) {
	for _, reason := range []string{"requests", "blocked"} {
		b.Run(reason, func(b *testing.B) {
			pool := benchPool(b)
			addLimit(b, pool, "storm", 1, nil, 10, 60)
			ctx := context.Background()
			acquire(b, pool, "storm", 0)
			if reason == "blocked" {
				if _, err := ratelimit.ReportRateLimited(ctx, pool, "test", "storm", time.Hour); err != nil {
					b.Fatal(err)
				}
			}
			runCallers(b, "refusals/s", func(int64) error {
				g, err := ratelimit.Acquire(ctx, pool, ratelimit.Request{Provider: "test", Endpoint: "storm"})
				if err == nil && (g.Granted || g.Reason != reason) {
					err = fmt.Errorf("unexpected %+v", g)
				}
				return err
			})
		})
	}
}
