package bench

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
)

// UpdateRateOptions configure the physical-limit probe.
type UpdateRateOptions struct {
	// Conns is the number of connections updating at once (default 8).
	Conns int
	// Duration of the measurement (default 3s).
	Duration time.Duration
}

// UpdateRateResult is the database's own single-row update rate.
type UpdateRateResult struct {
	Rate
	// SynchronousCommit is the server's setting during the run: with "on"
	// every commit waits for its WAL flush.
	SynchronousCommit string `json:"synchronous_commit"`
	Fsync             string `json:"fsync"`
}

// UpdateRate measures how many single-row UPDATE statements, each its own
// committed transaction, the server completes per second with Conns
// connections each updating its own row (pgbench "simple update" without
// the extra statements). Every queue state change is at least one such
// commit, so this is the ceiling a queue that commits per job approaches.
//
// It creates the table v3ctl_bench.counter and drops the schema afterwards.
func UpdateRate(ctx context.Context, pool *pgxpool.Pool, o UpdateRateOptions) (UpdateRateResult, error) {
	if o.Conns <= 0 {
		o.Conns = 8
	}
	if o.Duration <= 0 {
		o.Duration = 3 * time.Second
	}
	var res UpdateRateResult
	if err := pool.QueryRow(ctx, `SELECT current_setting('synchronous_commit'), current_setting('fsync')`).Scan(&res.SynchronousCommit, &res.Fsync); err != nil {
		return res, err
	}
	setup := `CREATE SCHEMA IF NOT EXISTS v3ctl_bench;
DROP TABLE IF EXISTS v3ctl_bench.counter;
CREATE TABLE v3ctl_bench.counter (id int PRIMARY KEY, n bigint NOT NULL DEFAULT 0) WITH (fillfactor = 50);`
	if _, err := pool.Exec(ctx, setup); err != nil {
		return res, fmt.Errorf("create the probe table: %w", err)
	}
	defer func() { _, _ = pool.Exec(context.Background(), `DROP SCHEMA IF EXISTS v3ctl_bench CASCADE`) }()
	if _, err := pool.Exec(ctx, `INSERT INTO v3ctl_bench.counter (id) SELECT g FROM generate_series(1, $1) g`, o.Conns); err != nil {
		return res, err
	}
	var ops atomic.Int64
	var wg sync.WaitGroup
	runCtx, cancel := context.WithTimeout(ctx, o.Duration)
	defer cancel()
	errc := make(chan error, o.Conns)
	start := time.Now()
	for i := 1; i <= o.Conns; i++ {
		wg.Add(1)
		go func(id int) {
			defer wg.Done()
			conn, err := pool.Acquire(ctx)
			if err != nil {
				errc <- err
				return
			}
			defer conn.Release()
			for runCtx.Err() == nil {
				if _, err := conn.Exec(runCtx, `UPDATE v3ctl_bench.counter SET n = n + 1 WHERE id = $1`, id); err != nil {
					if runCtx.Err() == nil {
						errc <- err
					}
					return
				}
				ops.Add(1)
			}
		}(i)
	}
	wg.Wait()
	elapsed := time.Since(start)
	close(errc)
	if err := <-errc; err != nil && !errors.Is(err, context.DeadlineExceeded) {
		return res, err
	}
	res.Rate = NewRate(int(ops.Load()), elapsed, o.Conns)
	return res, nil
}
