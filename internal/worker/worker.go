// Package worker is the job-processing loop behind `v3ctl worker run`: it
// claims jobs in batches to fill free slots (woken by NOTIFY on v3_jobs,
// polling as a fallback), renews every in-flight lease with one heartbeat
// statement per interval, runs the configured handler per job type and
// records the outcome through the queue's fenced SQL functions. It drains
// on shutdown, hands unfinished jobs back without consuming an attempt, and
// rides out database restarts by retrying with backoff: every state change
// carries the lease token, so a retried call can never complete a job twice.
package worker

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"runtime/debug"
	"sync"
	"sync/atomic"
	"time"
	"unicode/utf8"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/v3ctl/v3ctl/internal/db"
	"github.com/v3ctl/v3ctl/internal/handlers"
	"github.com/v3ctl/v3ctl/internal/sysconfig"
)

// Errors used as context causes.
var (
	ErrLeaseLost = errors.New("lease lost: the job was reclaimed or cancelled elsewhere")
	ErrShutdown  = errors.New("worker shutting down: grace period over")
)

type taskState int

const (
	stRunning   taskState = iota
	stFinishing           // handler returned; outcome being recorded
	stLost                // lease lost while running: result is discarded
	stAbandoned           // shutdown: handler cancelled, job to be released
)

type task struct {
	job     handlers.Job
	lease   Lease
	cancel  context.CancelCauseFunc
	state   taskState
	started time.Time
	log     *slog.Logger
}

// Worker runs jobs.
type Worker struct {
	cfg      Config
	pool     *pgxpool.Pool
	ownPool  bool
	handlers map[string]handlers.Handler
	types    []string
	log      *slog.Logger
	m        *Metrics

	mu      sync.Mutex
	running map[string]*task
	wg      sync.WaitGroup

	wake        chan struct{}
	slotFree    chan struct{}
	completions chan *completion

	// bg outlives the stop signal: handlers, heartbeats and outcome calls
	// run under it; it is cancelled when Run returns.
	bg       context.Context
	bgCancel context.CancelFunc

	heartbeat    time.Duration
	draining     atomic.Bool
	maintenance  atomic.Bool
	dbDownSince  atomic.Int64 // unix nanos; 0 when the database answers
	lastActivity atomic.Int64 // unix nanos of the last job start or finish (ExitWhenIdle)
	// Outcomes recorded by this worker, for the final log line.
	nCompleted, nRetrying, nFailed atomic.Int64
	listening                      atomic.Bool
	hasUsageFunc                   bool
	// hasCompleteSet: the schema has complete_jobs_v3 (else completions
	// are pipelined complete_job calls).
	hasCompleteSet bool
	metricsAddr    string
	ready          chan struct{}
}

// New checks the configuration and builds the handlers. pool may be nil
// (one is opened from cfg.DatabaseURL in Run).
func New(cfg Config, pool *pgxpool.Pool, extra map[string]handlers.Handler) (*Worker, error) {
	cfg.setDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	w := &Worker{cfg: cfg, pool: pool, log: cfg.Logger.With(slog.String("worker_id", cfg.WorkerID)),
		m: NewMetrics(), running: map[string]*task{}, wake: make(chan struct{}, 1),
		slotFree: make(chan struct{}, 1), ready: make(chan struct{})}
	w.completions = make(chan *completion, cfg.Concurrency)
	hs, err := handlers.BuildAll(cfg.Handlers, handlers.Deps{
		Capacity: &sqlCapacity{w: w},
		OnCapacityWait: func(p, e string) {
			w.m.CapacityWaits.WithLabelValues(p, e).Inc()
		},
	})
	if err != nil {
		return nil, err
	}
	if !cfg.DisableBuiltins {
		if _, ok := hs[TypeSystemMaintenance]; !ok {
			hs[TypeSystemMaintenance] = handlers.Func(w.systemMaintenance)
		}
		if _, ok := hs[TypeAuditCleanup]; !ok {
			hs[TypeAuditCleanup] = handlers.Func(w.auditCleanup)
		}
	}
	for k, h := range extra {
		hs[k] = h
		if w.cfg.Handlers == nil {
			w.cfg.Handlers = map[string]handlers.Spec{}
		}
		if _, ok := w.cfg.Handlers[k]; !ok {
			w.cfg.Handlers[k] = handlers.Spec{Kind: "go"}
		}
	}
	w.handlers = hs
	types, err := w.cfg.claimTypes()
	if err != nil {
		return nil, err
	}
	w.types = types
	return w, nil
}

// Metrics returns the worker's metrics.
func (w *Worker) Metrics() *Metrics { return w.m }

// MetricsAddr is the bound metrics address once Run has started.
func (w *Worker) MetricsAddr() string { <-w.ready; return w.metricsAddr }

// Types are the job types this worker claims.
func (w *Worker) Types() []string { return w.types }

// Run processes jobs until ctx is cancelled, then drains: running jobs get
// ShutdownGrace to finish, the rest are cancelled and handed back.
func (w *Worker) Run(ctx context.Context) error {
	w.bg, w.bgCancel = context.WithCancel(context.Background())
	defer w.bgCancel()
	if w.pool == nil {
		pool, err := w.connectPool(ctx)
		if err != nil {
			close(w.ready)
			return err
		}
		w.pool, w.ownPool = pool, true
		defer pool.Close()
	}
	if w.cfg.MetricsAddr != "" {
		addr, err := w.serveHTTP(w.bg, w.cfg.MetricsAddr)
		if err != nil {
			close(w.ready)
			return fmt.Errorf("metrics listener on %s: %w", w.cfg.MetricsAddr, err)
		}
		w.metricsAddr = addr
	}
	close(w.ready)
	w.heartbeat = w.cfg.HeartbeatInterval
	if w.heartbeat <= 0 {
		w.heartbeat = 30 * time.Second
		if err := w.retryDB(ctx, "read settings", func(c context.Context) error {
			n, err := sysconfig.Int(c, w.pool, "worker.heartbeat_interval_seconds", 30)
			if err == nil && n > 0 {
				w.heartbeat = time.Duration(n) * time.Second
			}
			return err
		}); err != nil && ctx.Err() == nil {
			return err
		}
	}
	w.hasCompleteSet = w.functionExists(ctx, "public.complete_jobs_v3(text,uuid[],uuid[],jsonb[])")
	w.hasUsageFunc = w.functionExists(ctx, "public.track_ai_processing_usage(uuid,uuid,integer,integer,timestamptz)")
	w.log.Info("worker started", slog.Int("concurrency", w.cfg.Concurrency), slog.Any("types", w.types),
		slog.Any("lanes", w.cfg.Lanes), slog.Duration("heartbeat", w.heartbeat),
		slog.Duration("poll_interval", w.cfg.PollInterval), slog.Duration("shutdown_grace", w.cfg.ShutdownGrace))
	if w.cfg.ExitWhenIdle > 0 {
		w.log.Info("will exit once the queue is drained", slog.Duration("exit_when_idle", w.cfg.ExitWhenIdle))
	}

	// loopCtx ends on a stop signal or when claimLoop returns by itself
	// (ExitWhenIdle); the LISTEN connection follows it.
	loopCtx, loopStop := context.WithCancel(ctx)
	defer loopStop()
	hbCtx, hbStop := context.WithCancel(w.bg)
	var aux sync.WaitGroup
	aux.Add(2)
	go func() { defer aux.Done(); w.listen(loopCtx) }()
	go func() { defer aux.Done(); w.heartbeatLoop(hbCtx) }()
	for i := 0; i < completers(w.cfg.Concurrency); i++ {
		go w.completer(w.bg)
	}

	w.lastActivity.Store(time.Now().UnixNano())
	w.claimLoop(loopCtx)
	loopStop()
	w.drain()
	hbStop()
	aux.Wait()
	w.log.Info("worker stopped", slog.Int64("completed", w.nCompleted.Load()),
		slog.Int64("failed_will_retry", w.nRetrying.Load()), slog.Int64("failed_final", w.nFailed.Load()))
	return nil
}

func (w *Worker) connectPool(ctx context.Context) (*pgxpool.Pool, error) {
	var pool *pgxpool.Pool
	err := w.retryDB(ctx, "connect", func(c context.Context) error {
		p, err := db.Connect(c, w.cfg.DatabaseURL, func(pc *pgxpool.Config) {
			pc.ConnConfig.RuntimeParams["application_name"] = "v3ctl-worker"
			if n := int32(w.cfg.Concurrency + 4); pc.MaxConns < n {
				pc.MaxConns = n
			}
		})
		pool = p
		return err
	})
	return pool, err
}

func (w *Worker) notReady() string {
	switch {
	case w.draining.Load():
		return "draining"
	case w.dbDownSince.Load() != 0:
		return "database unreachable"
	}
	return ""
}

func signal(ch chan struct{}) {
	select {
	case ch <- struct{}{}:
	default:
	}
}

// claimLoop claims jobs until ctx is done.
func (w *Worker) claimLoop(ctx context.Context) {
	var nextMaint, nextReclaim time.Time
	backoff := newBackoff()
	timer := time.NewTimer(0)
	defer timer.Stop()
	for ctx.Err() == nil {
		now := time.Now()
		if !now.Before(nextMaint) {
			var on bool
			err := w.callDB(ctx, "maintenance check", func(c context.Context) (err error) {
				on, err = sysconfig.Bool(c, w.pool, "system.maintenance_mode")
				return err
			})
			if err != nil {
				w.waitOrDone(ctx, backoff.next())
				continue
			}
			if on != w.maintenance.Swap(on) {
				if on {
					w.log.Warn("system.maintenance_mode is on: not claiming new jobs; in-flight jobs finish")
					w.m.Maintenance.Set(1)
				} else {
					w.log.Info("system.maintenance_mode cleared: claiming again")
					w.m.Maintenance.Set(0)
				}
			}
			nextMaint = now.Add(w.cfg.PollInterval)
		}
		if w.cfg.ReclaimInterval > 0 && !now.Before(nextReclaim) && !w.maintenance.Load() {
			nextReclaim = now.Add(w.cfg.ReclaimInterval)
			w.reclaim(ctx)
		}
		saturated := false
		if !w.maintenance.Load() {
			free := w.cfg.Concurrency - w.inFlight()
			if free > 0 {
				n, err := w.claim(ctx, free)
				if err != nil {
					w.waitOrDone(ctx, backoff.next())
					continue
				}
				backoff.reset()
				if n == free {
					continue // there may be more waiting
				}
			} else {
				saturated = true
			}
		}
		wait := w.cfg.PollInterval
		if w.cfg.ExitWhenIdle > 0 && w.inFlight() == 0 {
			idle := time.Since(time.Unix(0, w.lastActivity.Load()))
			if idle >= w.cfg.ExitWhenIdle {
				w.log.Info("queue drained: no job to run; exiting", slog.Duration("idle", idle.Round(time.Millisecond)))
				return
			}
			wait = min(wait, w.cfg.ExitWhenIdle-idle)
		}
		var slot chan struct{}
		if saturated || w.cfg.ExitWhenIdle > 0 {
			// ExitWhenIdle: a finished job starts the idle clock.
			slot = w.slotFree
		}
		if !timer.Stop() {
			select {
			case <-timer.C:
			default:
			}
		}
		timer.Reset(wait)
		select {
		case <-ctx.Done():
		case <-w.wake:
		case <-slot:
			w.gatherSlots(ctx)
		case <-timer.C:
		}
	}
}

// claimCooldown bounds how long a saturated worker waits, once a slot has
// freed, for more slots before it claims: one claim for several jobs costs
// the database far less than one claim per job. An idle worker (woken by
// NOTIFY) claims at once.
const claimCooldown = 2 * time.Millisecond

// gatherSlots waits until a quarter of the slots (at most 8) are free or
// claimCooldown has passed.
func (w *Worker) gatherSlots(ctx context.Context) {
	want := min(max(w.cfg.Concurrency/4, 1), 8)
	if w.cfg.Concurrency-w.inFlight() >= want {
		return
	}
	t := time.NewTimer(claimCooldown)
	defer t.Stop()
	for w.cfg.Concurrency-w.inFlight() < want {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			return
		case <-w.slotFree:
		}
	}
}

func (w *Worker) waitOrDone(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
	}
}

func (w *Worker) inFlight() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return len(w.running)
}

// claim takes up to limit jobs and starts them. The claim itself runs
// under bg, not ctx: a stop signal arriving mid-statement must not leave a
// claimed job whose row we never read.
func (w *Worker) claim(ctx context.Context, limit int) (int, error) {
	if ctx.Err() != nil {
		return 0, ctx.Err()
	}
	var jobs []claimedJob
	err := w.callDB(ctx, "claim", func(c context.Context) (err error) {
		jobs, err = claimJobs(c, w.pool, w.cfg.WorkerID, w.types, w.cfg.Lanes, limit)
		return err
	})
	if err != nil {
		return 0, err
	}
	for _, j := range jobs {
		w.start(j)
	}
	return len(jobs), nil
}

func (w *Worker) start(j claimedJob) {
	tctx, cancel := context.WithCancelCause(w.bg)
	t := &task{job: j.Job, lease: j.Lease, cancel: cancel, started: time.Now()}
	t.log = w.log.With(slog.String("job_id", j.Job.ID), slog.String("job_type", j.Job.Type),
		slog.Int("attempt", j.Job.Attempt))
	if j.Job.CorrelationID != "" {
		t.log = t.log.With(slog.String("correlation_id", j.Job.CorrelationID))
	}
	w.mu.Lock()
	if old := w.running[j.Job.ID]; old != nil {
		// This worker claimed the job again while an earlier run of it is
		// still going: that run's lease was reclaimed, so it is lost.
		if old.state == stRunning {
			old.state = stLost
		}
		old.cancel(ErrLeaseLost)
	}
	w.running[j.Job.ID] = t
	w.mu.Unlock()
	w.lastActivity.Store(time.Now().UnixNano())
	w.m.Claimed.WithLabelValues(j.Job.Type).Inc()
	w.m.InFlight.Inc()
	t.log.Info("job claimed")
	w.wg.Add(1)
	go w.run(tctx, t)
}

// run executes one job and records its outcome.
func (w *Worker) run(ctx context.Context, t *task) {
	defer func() {
		t.cancel(nil)
		w.mu.Lock()
		if w.running[t.job.ID] == t { // not a newer claim of the same job
			delete(w.running, t.job.ID)
		}
		w.mu.Unlock()
		w.lastActivity.Store(time.Now().UnixNano())
		w.m.InFlight.Dec()
		signal(w.slotFree)
		w.wg.Done()
	}()
	res, err, panicked := w.invoke(ctx, t)
	dur := time.Since(t.started)

	w.mu.Lock()
	st := t.state
	if st == stRunning {
		t.state = stFinishing
	}
	w.mu.Unlock()

	lg := t.log.With(slog.Duration("duration", dur.Round(time.Millisecond)))
	switch st {
	case stLost:
		w.m.Discarded.WithLabelValues(t.job.Type).Inc()
		w.m.Duration.WithLabelValues(t.job.Type, "lease_lost").Observe(dur.Seconds())
		lg.Warn("lease lost: handler cancelled, result discarded")
		return
	case stAbandoned:
		if err == nil && !panicked {
			// The handler succeeded just as the grace period ran out: keep
			// its result rather than run the job again.
			w.complete(t, lg, res, dur)
			return
		}
		w.m.Duration.WithLabelValues(t.job.Type, "released").Observe(dur.Seconds())
		var ok bool
		rerr := w.retryDB(w.bg, "release", func(c context.Context) (e error) {
			ok, e = releaseJob(c, w.pool, t.lease)
			return e
		})
		switch {
		case rerr != nil:
			lg.Error("could not hand the job back; reclaim will recover it", slog.String("error", rerr.Error()))
		case !ok:
			lg.Warn("job not handed back: its lease was already gone")
		default:
			w.m.Released.WithLabelValues(t.job.Type).Inc()
			lg.Info("job handed back unfinished (no attempt consumed)")
		}
		return
	}

	switch {
	case panicked:
		w.m.Duration.WithLabelValues(t.job.Type, "panic").Observe(dur.Seconds())
		w.fail(t, lg, err, true, "panic")
	case err == nil:
		w.complete(t, lg, res, dur)
	default:
		kind, after := handlers.Classify(err)
		w.m.Duration.WithLabelValues(t.job.Type, kind.String()).Observe(dur.Seconds())
		switch kind {
		case handlers.KindRateLimited:
			w.reschedule(t, lg, after, err)
		case handlers.KindPermanent:
			w.fail(t, lg, err, false, "permanent")
		default:
			w.fail(t, lg, err, true, "retryable")
		}
	}
}

// invoke runs the handler, turning a panic into an error.
func (w *Worker) invoke(ctx context.Context, t *task) (res handlers.Result, err error, panicked bool) {
	h, ok := w.handlers[t.job.Type]
	if !ok {
		return res, handlers.Permanent(fmt.Errorf("no handler for job type %s", t.job.Type)), false
	}
	defer func() {
		if p := recover(); p != nil {
			t.log.Error("handler panicked", slog.String("panic", fmt.Sprint(p)), slog.String("stack", string(debug.Stack())))
			res, err, panicked = handlers.Result{}, fmt.Errorf("handler panicked: %v", p), true
		}
	}()
	res, err = h.Handle(ctx, t.job)
	return res, err, false
}

func (w *Worker) complete(t *task, lg *slog.Logger, res handlers.Result, dur time.Duration) {
	var ok bool
	var err error
	if w.batchable(res) {
		ok, err = w.completeBatched(t, res)
	} else {
		err = w.retryDB(w.bg, "complete", func(c context.Context) (e error) {
			ok, e = w.completeTx(c, t, res, dur)
			return e
		})
	}
	if err != nil {
		w.m.Duration.WithLabelValues(t.job.Type, "error").Observe(dur.Seconds())
		lg.Error("could not record the result; the job will be retried after its lease expires", slog.String("error", err.Error()))
		return
	}
	if !ok {
		w.m.Discarded.WithLabelValues(t.job.Type).Inc()
		w.m.Duration.WithLabelValues(t.job.Type, "lease_lost").Observe(dur.Seconds())
		lg.Warn("result discarded: the lease was lost before completion")
		return
	}
	w.m.Completed.WithLabelValues(t.job.Type).Inc()
	w.nCompleted.Add(1)
	w.m.Duration.WithLabelValues(t.job.Type, "success").Observe(dur.Seconds())
	attrs := []any{}
	if res.Usage != nil && res.Usage.TotalTokens > 0 {
		attrs = append(attrs, slog.Int("tokens", res.Usage.TotalTokens))
	}
	lg.Info("job completed", attrs...)
}

func (w *Worker) fail(t *task, lg *slog.Logger, herr error, retryable bool, reason string) {
	var fr FailResult
	err := w.retryDB(w.bg, "fail", func(c context.Context) (e error) {
		fr, e = failJob(c, w.pool, t.lease, truncateErr(herr.Error()), retryable)
		return e
	})
	if err != nil {
		lg.Error("could not record the failure; the job will be retried after its lease expires", slog.String("error", err.Error()))
		return
	}
	if !fr.OK {
		w.m.Discarded.WithLabelValues(t.job.Type).Inc()
		lg.Warn("failure not recorded: the lease was lost", slog.String("error", herr.Error()))
		return
	}
	w.m.Failed.WithLabelValues(t.job.Type, reason).Inc()
	attrs := []any{slog.String("reason", reason), slog.String("status", fr.Status), slog.String("error", herr.Error())}
	if fr.NextAttemptAt != nil {
		attrs = append(attrs, slog.Time("next_attempt_at", *fr.NextAttemptAt))
	}
	if fr.Status == "dead_letter" || !retryable {
		w.nFailed.Add(1)
		lg.Error("job failed", attrs...)
	} else {
		w.nRetrying.Add(1)
		lg.Warn("job failed; will retry", attrs...)
	}
}

func (w *Worker) reschedule(t *task, lg *slog.Logger, after time.Duration, herr error) {
	var ok bool
	err := w.retryDB(w.bg, "reschedule", func(c context.Context) (e error) {
		ok, e = rescheduleJob(c, w.pool, t.lease, after, truncateErr(herr.Error()))
		return e
	})
	if err != nil {
		// reschedule_job refused (or the database stayed unreachable): fall
		// back to a retryable failure, which consumes an attempt.
		lg.Warn("could not reschedule; failing the job as retryable instead", slog.String("error", err.Error()))
		w.fail(t, lg, herr, true, "retryable")
		return
	}
	if !ok {
		w.m.Discarded.WithLabelValues(t.job.Type).Inc()
		lg.Warn("reschedule not recorded: the lease was lost")
		return
	}
	w.m.Rescheduled.WithLabelValues(t.job.Type).Inc()
	lg.Info("rate limited: job rescheduled (no attempt consumed)", slog.Duration("retry_after", after))
}

func truncateErr(s string) string {
	const n = 4000
	if len(s) > n {
		i := n
		for i > 0 && !utf8.RuneStart(s[i]) { // keep whole characters
			i--
		}
		return s[:i] + "…"
	}
	return s
}

// drain waits up to ShutdownGrace for running jobs, then cancels the rest
// and waits for them to be handed back.
func (w *Worker) drain() {
	w.draining.Store(true)
	w.m.Draining.Set(1)
	n := w.inFlight()
	if n > 0 {
		w.log.Info("stop requested: no new claims; waiting for running jobs", slog.Int("in_flight", n), slog.Duration("grace", w.cfg.ShutdownGrace))
	}
	done := make(chan struct{})
	go func() { w.wg.Wait(); close(done) }()
	select {
	case <-done:
		return
	case <-time.After(w.cfg.ShutdownGrace):
	}
	w.mu.Lock()
	var left []*task
	for _, t := range w.running {
		if t.state == stRunning {
			t.state = stAbandoned
			left = append(left, t)
		}
	}
	w.mu.Unlock()
	w.log.Warn("grace period over: cancelling unfinished jobs and handing them back", slog.Int("jobs", len(left)))
	for _, t := range left {
		t.cancel(ErrShutdown)
	}
	select {
	case <-done:
	case <-time.After(30 * time.Second):
		w.log.Error("some handlers did not stop after cancellation; their jobs are left for reclaim")
	}
}

// heartbeatLoop renews every in-flight lease with one statement per
// interval and cancels jobs whose lease is gone.
func (w *Worker) heartbeatLoop(ctx context.Context) {
	wait := w.heartbeat
	for {
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
		wait = w.heartbeat
		w.mu.Lock()
		leases := make([]Lease, 0, len(w.running))
		for _, tk := range w.running {
			if tk.state == stRunning || tk.state == stFinishing {
				leases = append(leases, tk.lease)
			}
		}
		w.mu.Unlock()
		if len(leases) == 0 {
			continue
		}
		var lost []string
		err := w.callDB(ctx, "heartbeat", func(c context.Context) (e error) {
			lost, e = heartbeatJobs(c, w.pool, w.cfg.WorkerID, leases)
			return e
		})
		if err != nil {
			w.m.HeartbeatFailures.Inc()
			wait = min(w.heartbeat, time.Second)
			continue
		}
		sent := make(map[string]string, len(leases))
		for _, l := range leases {
			sent[l.JobID] = l.Token
		}
		for _, id := range lost {
			w.mu.Lock()
			tk := w.running[id]
			// Only the run whose lease was sent: the job may have been
			// claimed again meanwhile under a new lease.
			cancel := tk != nil && tk.state == stRunning && tk.lease.Token == sent[id]
			if cancel {
				tk.state = stLost
			}
			w.mu.Unlock()
			if cancel {
				w.m.LeasesLost.Inc()
				tk.log.Warn("lease lost: cancelling the handler")
				tk.cancel(ErrLeaseLost)
			}
		}
	}
}

func (w *Worker) reclaim(ctx context.Context) {
	_ = w.callDB(ctx, "reclaim", func(c context.Context) error {
		n, err := reclaimJobs(c, w.pool)
		if err == nil && n > 0 {
			w.log.Info("reclaimed timed-out jobs", slog.Int("jobs", n))
		}
		return err
	})
}

func (w *Worker) functionExists(ctx context.Context, sig string) bool {
	var ok bool
	_ = w.retryDB(ctx, "read schema", func(c context.Context) error {
		return w.pool.QueryRow(c, `SELECT to_regprocedure($1) IS NOT NULL`, sig).Scan(&ok)
	})
	return ok
}
