package bench

import (
	"context"
	"encoding/json"
	"fmt"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"golang.org/x/sync/errgroup"
)

// The capacity workload uses its own provider/endpoint with limits far
// above what it can reach, so every acquire is decided (and granted) by the
// real functions without touching a real vendor's limits.
const (
	BenchProvider = "v3ctl-bench"
	BenchEndpoint = "noop"
)

// CapacityOptions configure the vendor-capacity workload.
type CapacityOptions struct {
	Callers  int           `json:"callers"`
	Duration time.Duration `json:"-"`
}

// CapacityResult is acquire+release pairs per second.
type CapacityResult struct {
	Rate
	Refused int64 `json:"refused"`
}

// Capacity runs acquire_api_capacity_v2 + release_api_capacity_v2 pairs from
// o.Callers concurrent callers for o.Duration (each call its own
// transaction, as the functions require). The bench limit allows exactly
// o.Callers concurrent holds, so the concurrency check is exercised at its
// edge; a refusal (none expected) is counted, not retried.
func Capacity(ctx context.Context, pool *pgxpool.Pool, o CapacityOptions) (CapacityResult, error) {
	if o.Callers <= 0 {
		o.Callers = 64
	}
	if o.Duration <= 0 {
		o.Duration = 5 * time.Second
	}
	var exists bool
	if err := pool.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM public.api_rate_limits WHERE provider_name = $1 AND api_endpoint = $2)`,
		BenchProvider, BenchEndpoint).Scan(&exists); err != nil {
		return CapacityResult{}, err
	}
	if !exists {
		if _, err := pool.Exec(ctx, `SELECT public.add_api_rate_limit($1, $2, 1000000000, NULL, $3, 'active', 60, 'v3ctl-bench', 'benchmark limit')`,
			BenchProvider, BenchEndpoint, o.Callers); err != nil {
			return CapacityResult{}, fmt.Errorf("create the bench rate limit: %w", err)
		}
	} else {
		ch, _ := json.Marshal(map[string]any{"concurrent_requests": o.Callers, "requests_per_minute": 1000000000, "status": "active"})
		if _, err := pool.Exec(ctx, `SELECT public.set_api_rate_limit($1, $2, $3::jsonb, 'v3ctl-bench', 'benchmark limit')`,
			BenchProvider, BenchEndpoint, string(ch)); err != nil {
			return CapacityResult{}, fmt.Errorf("update the bench rate limit: %w", err)
		}
	}
	var pairs, refused atomic.Int64
	// Calls run under ctx, not under a deadline: a call cancelled between
	// its commit and its answer would leak a hold the caller never saw.
	g, gctx := errgroup.WithContext(ctx)
	start := time.Now()
	deadline := start.Add(o.Duration)
	for i := 0; i < o.Callers; i++ {
		g.Go(func() error {
			conn, err := pool.Acquire(gctx)
			if err != nil {
				return err
			}
			defer conn.Release()
			for gctx.Err() == nil && time.Now().Before(deadline) {
				var granted bool
				var hold *string
				err := conn.QueryRow(gctx, `SELECT (r->>'granted')::boolean, r->>'hold_id'
FROM public.acquire_api_capacity_v2($1, $2, 0) r`, BenchProvider, BenchEndpoint).Scan(&granted, &hold)
				if err != nil {
					return err
				}
				if !granted || hold == nil {
					refused.Add(1)
					continue
				}
				if _, err := conn.Exec(gctx, `SELECT public.release_api_capacity_v2($1::uuid, 0)`, *hold); err != nil {
					return err
				}
				pairs.Add(1)
			}
			return nil
		})
	}
	err := g.Wait()
	elapsed := time.Since(start)
	if err != nil {
		return CapacityResult{}, err
	}
	return CapacityResult{Rate: NewRate(int(pairs.Load()), elapsed, o.Callers), Refused: refused.Load()}, nil
}
