package bench

import (
	"context"
	"crypto/rand"
	"fmt"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"golang.org/x/sync/errgroup"
)

// UsageOptions configure the usage-event workload.
type UsageOptions struct {
	Events  int `json:"events"`
	Workers int `json:"workers"`
}

// UsageResult is idempotent usage events per second.
type UsageResult struct {
	Rate
	// Calls is every track call made: each event is sent twice.
	Calls int `json:"calls"`
	// Recorded is the number of usage_events rows the run added: it must
	// equal the number of distinct events.
	Recorded int64 `json:"recorded"`
}

func newUUID() string {
	var b [16]byte
	_, _ = rand.Read(b[:])
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	return fmt.Sprintf("%x-%x-%x-%x-%x", b[0:4], b[4:6], b[6:8], b[8:10], b[10:])
}

// benchProfiles returns n bench profiles (self profiles of bench accounts
// named v3ctl-bench-<i>@bench.invalid), creating the missing ones.
func benchProfiles(ctx context.Context, pool *pgxpool.Pool, n int) ([]string, error) {
	rows, err := pool.Query(ctx, `WITH want AS (
  SELECT 'v3ctl-bench-' || g || '@bench.invalid' AS email FROM pg_catalog.generate_series(1, $1) g
), ins AS (
  INSERT INTO auth.users (email) SELECT email FROM want ON CONFLICT (email) DO NOTHING RETURNING id
), u AS (
  SELECT id FROM ins UNION SELECT au.id FROM auth.users au JOIN want USING (email)
), p AS (
  INSERT INTO public.user_profiles (account_owner_id, profile_type, display_name)
  SELECT id, 'self', 'v3ctl bench' FROM u
  WHERE NOT EXISTS (SELECT 1 FROM public.user_profiles up WHERE up.account_owner_id = u.id AND up.profile_type = 'self')
  RETURNING id
)
SELECT id::text FROM p
UNION
SELECT up.id::text FROM public.user_profiles up JOIN u ON up.account_owner_id = u.id WHERE up.profile_type = 'self'`, n)
	if err != nil {
		return nil, fmt.Errorf("create bench profiles: %w", err)
	}
	defer rows.Close()
	var ids []string
	for rows.Next() {
		var id string
		if err := rows.Scan(&id); err != nil {
			return nil, err
		}
		ids = append(ids, id)
	}
	if err := rows.Err(); err != nil {
		return nil, err
	}
	if len(ids) < n {
		return nil, fmt.Errorf("bench profiles: got %d, want %d", len(ids), n)
	}
	return ids[:n], nil
}

// Usage records o.Events AI-usage events (track_ai_processing_usage, one
// bench profile per worker) and sends each twice: the repeat must be a
// no-op. It times the whole and checks that exactly o.Events rows were
// added.
func Usage(ctx context.Context, pool *pgxpool.Pool, o UsageOptions) (UsageResult, error) {
	if o.Workers <= 0 {
		o.Workers = 16
	}
	profiles, err := benchProfiles(ctx, pool, o.Workers)
	if err != nil {
		return UsageResult{}, err
	}
	var before int64
	if err := pool.QueryRow(ctx, `SELECT count(*) FROM public.usage_events WHERE profile_id = ANY ($1::uuid[]) AND event_type = 'ai_processing_completed'`, profiles).Scan(&before); err != nil {
		return UsageResult{}, err
	}
	var next atomic.Int64
	g, gctx := errgroup.WithContext(ctx)
	start := time.Now()
	for w := 0; w < o.Workers; w++ {
		g.Go(func() error {
			conn, err := pool.Acquire(gctx)
			if err != nil {
				return err
			}
			defer conn.Release()
			for next.Add(1) <= int64(o.Events) {
				job := newUUID()
				for range 2 {
					if _, err := conn.Exec(gctx, `SELECT public.track_ai_processing_usage($1::uuid, $2::uuid, 100, 1)`, profiles[w], job); err != nil {
						return err
					}
				}
			}
			return nil
		})
	}
	if err := g.Wait(); err != nil {
		return UsageResult{}, err
	}
	elapsed := time.Since(start)
	res := UsageResult{Rate: NewRate(o.Events, elapsed, o.Workers), Calls: 2 * o.Events}
	var after int64
	if err := pool.QueryRow(ctx, `SELECT count(*) FROM public.usage_events WHERE profile_id = ANY ($1::uuid[]) AND event_type = 'ai_processing_completed'`, profiles).Scan(&after); err != nil {
		return res, err
	}
	// limit_hit events (80 % and 100 % of the plan's tokens, once per
	// period) are not what is measured: only the tracked jobs count.
	res.Recorded = after - before
	if res.Recorded != int64(o.Events) {
		return res, fmt.Errorf("usage: %d events sent (each twice) but %d rows recorded: idempotency broken", o.Events, res.Recorded)
	}
	return res, nil
}
