package worker

import (
	"context"
	"log/slog"
	"time"

	"github.com/jackc/pgx/v5"
)

// NotifyChannel is the channel enqueue_job_v3 notifies.
const NotifyChannel = "v3_jobs"

// listen keeps a dedicated connection (not from the pool: LISTEN is
// session state) on LISTEN v3_jobs and wakes the claim loop on every
// notification. It reconnects with backoff; after a reconnect it wakes the
// loop once, since notifications sent meanwhile are lost. Polling covers
// the gaps.
func (w *Worker) listen(ctx context.Context) {
	b := newBackoff()
	for ctx.Err() == nil {
		conn, err := w.listenConn(ctx)
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			w.listening.Store(false)
			w.log.Debug("LISTEN connection failed; polling meanwhile", slog.String("error", err.Error()))
			w.waitOrDone(ctx, b.next())
			continue
		}
		b.reset()
		w.listening.Store(true)
		signal(w.wake)
		for {
			_, err := conn.WaitForNotification(ctx)
			if err != nil {
				break
			}
			signal(w.wake)
		}
		w.listening.Store(false)
		cctx, cancel := context.WithTimeout(context.Background(), time.Second)
		_ = conn.Close(cctx)
		cancel()
		if ctx.Err() == nil {
			w.log.Debug("LISTEN connection lost; reconnecting")
		}
	}
}

func (w *Worker) listenConn(ctx context.Context) (*pgx.Conn, error) {
	cfg, err := pgx.ParseConfig(w.listenURL())
	if err != nil {
		return nil, err
	}
	cfg.RuntimeParams["application_name"] = "v3ctl-worker-listen"
	if cfg.ConnectTimeout == 0 || cfg.ConnectTimeout > 10*time.Second {
		cfg.ConnectTimeout = 10 * time.Second
	}
	conn, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		return nil, err
	}
	if _, err := conn.Exec(ctx, "LISTEN "+NotifyChannel); err != nil {
		_ = conn.Close(context.Background())
		return nil, err
	}
	return conn, nil
}

func (w *Worker) listenURL() string {
	if w.cfg.DatabaseURL != "" {
		return w.cfg.DatabaseURL
	}
	return w.pool.Config().ConnConfig.ConnString()
}
