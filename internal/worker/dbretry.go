package worker

import (
	"context"
	"errors"
	"log/slog"
	"math/rand/v2"
	"time"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/v3ctl/v3ctl/internal/db"
)

// callTimeout bounds one database call, so a hung connection cannot stall
// the loop forever.
const callTimeout = 15 * time.Second

// Transient reports whether a database error is worth retrying: lost
// connections, server shutdown or restart, too many connections,
// serialization failures and deadlocks. Errors raised by the schema's
// functions (validation, missing objects) are not.
func Transient(err error) bool {
	if err == nil {
		return false
	}
	var pg *pgconn.PgError
	if errors.As(err, &pg) {
		switch pg.Code[:2] {
		case "08", "57", "53", "58":
			return true
		}
		return pg.Code == "40001" || pg.Code == "40P01" || pg.Code == "55P03"
	}
	// Anything else (network errors, closed connections, timeouts of our
	// own per-call deadline, pool acquisition failures) is a transport problem.
	return true
}

// callDB makes one attempt at a database call under bg (never under the
// caller's signal context: a statement interrupted half way could leave a
// claimed job nobody reads) and keeps track of the database's health.
func (w *Worker) callDB(ctx context.Context, op string, fn func(context.Context) error) error {
	c, cancel := context.WithTimeout(w.bg, callTimeout)
	defer cancel()
	err := fn(c)
	if err == nil {
		if since := w.dbDownSince.Swap(0); since != 0 {
			w.log.Info("database reachable again", slog.String("op", op),
				slog.Duration("outage", time.Since(time.Unix(0, since)).Round(time.Millisecond)))
		}
		return nil
	}
	w.m.DBErrors.WithLabelValues(op).Inc()
	if Transient(err) {
		if w.dbDownSince.CompareAndSwap(0, time.Now().UnixNano()) {
			w.log.Warn("database unavailable; retrying with backoff", slog.String("op", op), slog.String("error", db.Explain(err).Error()))
		} else {
			w.log.Debug("database still unavailable", slog.String("op", op), slog.String("error", err.Error()))
		}
	} else {
		w.log.Error("database call failed", slog.String("op", op), slog.String("error", db.Explain(err).Error()))
	}
	return err
}

// retryDB repeats a database call with backoff while its errors are
// transient, until it succeeds or ctx ends.
func (w *Worker) retryDB(ctx context.Context, op string, fn func(context.Context) error) error {
	b := newBackoff()
	for {
		err := w.callDB(ctx, op, fn)
		if err == nil || !Transient(err) {
			return err
		}
		t := time.NewTimer(b.next())
		select {
		case <-ctx.Done():
			t.Stop()
			return errors.Join(ctx.Err(), err)
		case <-w.bg.Done():
			t.Stop()
			return errors.Join(w.bg.Err(), err)
		case <-t.C:
		}
	}
}

// backoff is exponential with full jitter, 100ms up to 5s.
type backoff struct{ n int }

func newBackoff() *backoff { return &backoff{} }

func (b *backoff) next() time.Duration {
	d := 100 * time.Millisecond << min(b.n, 6)
	if d > 5*time.Second {
		d = 5 * time.Second
	}
	b.n++
	return d/2 + time.Duration(rand.Int64N(int64(d/2)+1))
}

func (b *backoff) reset() { b.n = 0 }
