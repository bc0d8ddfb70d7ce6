package worker

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/v3ctl/v3ctl/internal/handlers"
	"github.com/v3ctl/v3ctl/internal/queue"
	"github.com/v3ctl/v3ctl/internal/testdb"
)

// syncBuf is a goroutine-safe log sink.
type syncBuf struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuf) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuf) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

type env struct {
	t    *testing.T
	url  string
	pool *pgxpool.Pool
	logs *syncBuf
}

func newEnv(t *testing.T) *env {
	t.Helper()
	url := testdb.NewURL(t)
	e := &env{t: t, url: url, pool: testdb.Pool(t, url), logs: &syncBuf{}}
	e.exec(`UPDATE public.system_configuration SET config_value = '0' WHERE config_key = 'worker.reclaim_jitter_max_seconds'`)
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("worker logs:\n%s", e.logs.String())
		}
	})
	return e
}

func (e *env) exec(sql string, args ...any) {
	e.t.Helper()
	if _, err := e.pool.Exec(context.Background(), sql, args...); err != nil {
		e.t.Fatalf("%s: %v", sql, err)
	}
}

func (e *env) enqueue(jobType string, payload string) string {
	e.t.Helper()
	r, err := queue.Enqueue(context.Background(), e.pool, queue.EnqueueParams{JobType: jobType, JobName: "test",
		Payload: json.RawMessage(payload), Category: "standard", Priority: 5})
	if err != nil {
		e.t.Fatal(err)
	}
	return r.JobID
}

type jobRow struct {
	Status      string
	RetryCount  int
	Reschedules int
	Result      []byte
	Token       *string
}

func (e *env) job(id string) jobRow {
	e.t.Helper()
	var r jobRow
	if err := e.pool.QueryRow(context.Background(), `SELECT status, retry_count, reschedule_count, job_result, lease_token::text
		FROM public.job_queue_all WHERE id = $1`, id).Scan(&r.Status, &r.RetryCount, &r.Reschedules, &r.Result, &r.Token); err != nil {
		e.t.Fatalf("job %s: %v", id, err)
	}
	return r
}

func (e *env) auditCount(id, op string) int {
	e.t.Helper()
	var n int
	if err := e.pool.QueryRow(context.Background(), `SELECT count(*) FROM public.audit_log WHERE job_id = $1 AND operation = $2`, id, op).Scan(&n); err != nil {
		e.t.Fatal(err)
	}
	return n
}

// waitFor polls cond until it holds (or fails the test after a generous
// deadline: a hang, not a slow run).
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(45 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

type running struct {
	w        *Worker
	cancel   context.CancelFunc
	done     chan error    // Run's result (received once, by stop or the test)
	finished chan struct{} // closed when Run has returned
}

func (r *running) stop(t *testing.T) {
	t.Helper()
	r.cancel()
	select {
	case err := <-r.done:
		if err != nil {
			t.Fatalf("Run: %v", err)
		}
	case <-time.After(60 * time.Second):
		t.Fatal("worker did not stop")
	}
}

func (e *env) start(cfg Config, hs map[string]handlers.Handler) *running {
	e.t.Helper()
	cfg.DatabaseURL = e.url
	if cfg.WorkerID == "" {
		cfg.WorkerID = "test-worker"
	}
	if cfg.PollInterval == 0 {
		cfg.PollInterval = 100 * time.Millisecond
	}
	if cfg.HeartbeatInterval == 0 {
		cfg.HeartbeatInterval = time.Second
	}
	cfg.Logger = slog.New(slog.NewTextHandler(e.logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	w, err := New(cfg, nil, hs)
	if err != nil {
		e.t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	r := &running{w: w, cancel: cancel, done: make(chan error, 1), finished: make(chan struct{})}
	go func() { r.done <- w.Run(ctx); close(r.finished) }()
	e.t.Cleanup(func() {
		cancel()
		select {
		case <-r.finished:
		case <-time.After(60 * time.Second):
		}
	})
	return r
}

// modeHandler behaves as the payload's "mode" says.
func modeHandler(calls *sync.Map) handlers.Handler {
	return handlers.Func(func(ctx context.Context, j handlers.Job) (handlers.Result, error) {
		var p struct{ Mode string }
		_ = json.Unmarshal(j.Payload, &p)
		n, _ := calls.LoadOrStore(j.ID, new(atomic.Int64))
		n.(*atomic.Int64).Add(1)
		switch p.Mode {
		case "retry":
			return handlers.Result{}, errors.New("temporary")
		case "permanent":
			return handlers.Result{}, handlers.Permanent(errors.New("bad input"))
		case "rate":
			return handlers.Result{}, handlers.RateLimited(time.Hour, errors.New("429"))
		case "panic":
			panic("handler bug")
		}
		return handlers.Result{Output: json.RawMessage(`{"done":true}`)}, nil
	})
}

func TestOutcomes(t *testing.T) {
	e := newEnv(t)
	var calls sync.Map
	ids := map[string]string{}
	for _, m := range []string{"ok", "retry", "permanent", "rate", "panic"} {
		ids[m] = e.enqueue("report_generation", fmt.Sprintf(`{"mode":%q}`, m))
	}
	r := e.start(Config{Concurrency: 2, Types: []string{"report_generation"}}, map[string]handlers.Handler{"report_generation": modeHandler(&calls)})
	waitFor(t, "every job handled", func() bool {
		return e.job(ids["ok"]).Status == "completed" && e.job(ids["retry"]).RetryCount == 1 &&
			e.job(ids["permanent"]).Status == "dead_letter" && e.job(ids["rate"]).Reschedules == 1 &&
			e.job(ids["panic"]).RetryCount == 1
	})
	// After a panic the worker lives on: a new job still completes.
	after := e.enqueue("report_generation", `{"mode":"ok"}`)
	waitFor(t, "a job after the panic", func() bool { return e.job(after).Status == "completed" })
	r.stop(t)

	if j := e.job(ids["ok"]); string(j.Result) != `{"done": true}` {
		t.Fatalf("result %s", j.Result)
	}
	if j := e.job(ids["retry"]); j.Status != "pending" || j.RetryCount != 1 {
		t.Fatalf("retryable: %+v", j)
	}
	if j := e.job(ids["rate"]); j.Status != "pending" || j.RetryCount != 0 || j.Reschedules != 1 {
		t.Fatalf("rate limited must not consume an attempt: %+v", j)
	}
	if j := e.job(ids["panic"]); j.Status != "pending" || j.RetryCount != 1 {
		t.Fatalf("panic: %+v", j)
	}
	m := r.w.Metrics()
	if v := metricValue(m.Failed.WithLabelValues("report_generation", "panic")); v != 1 {
		t.Fatalf("panic metric %v", v)
	}
	if v := metricValue(m.Completed.WithLabelValues("report_generation")); v != 2 {
		t.Fatalf("completed metric %v", v)
	}
	if strings.Contains(e.logs.String(), `"mode"`) {
		t.Fatal("a payload leaked into the logs")
	}
}

// TestBatchClaimConcurrency: 40 jobs, concurrency 4: never more than 4 run
// at once, every job runs and completes exactly once.
// TestCompletesWithoutCompleteJobsV3: on a schema without complete_jobs_v3
// (applied by an older release) completions fall back to complete_job
// calls and every job still completes exactly once.
func TestCompletesWithoutCompleteJobsV3(t *testing.T) {
	e := newEnv(t)
	e.exec(`DROP FUNCTION public.complete_jobs_v3(text, uuid[], uuid[], jsonb[])`)
	h := handlers.Func(func(ctx context.Context, j handlers.Job) (handlers.Result, error) {
		time.Sleep(5 * time.Millisecond)
		return handlers.Result{Output: json.RawMessage(`{"ok":true}`)}, nil
	})
	for i := 0; i < 40; i++ {
		e.enqueue("data_migration", `{"n":1}`)
	}
	r := e.start(Config{Concurrency: 8}, map[string]handlers.Handler{"data_migration": h})
	waitFor(t, "all completed", func() bool {
		var n int
		_ = e.pool.QueryRow(context.Background(), `SELECT count(*) FROM public.job_queue_all WHERE status = 'completed' AND job_type = 'data_migration'`).Scan(&n)
		return n == 40
	})
	r.stop(t)
	var completes int
	if err := e.pool.QueryRow(context.Background(), `SELECT count(*) FROM public.audit_log WHERE operation = 'COMPLETE'`).Scan(&completes); err != nil || completes != 40 {
		t.Fatalf("%d COMPLETE audit rows (%v), want 40", completes, err)
	}
	if n := metricValue(r.w.Metrics().DBErrors.WithLabelValues("complete batch")); n > 0 {
		t.Fatalf("%v failed batch completions: the fallback was not used", n)
	}
}

func TestBatchClaimConcurrency(t *testing.T) {
	e := newEnv(t)
	var cur, peak atomic.Int64
	var calls sync.Map
	h := handlers.Func(func(ctx context.Context, j handlers.Job) (handlers.Result, error) {
		n := cur.Add(1)
		for {
			p := peak.Load()
			if n <= p || peak.CompareAndSwap(p, n) {
				break
			}
		}
		c, _ := calls.LoadOrStore(j.ID, new(atomic.Int64))
		c.(*atomic.Int64).Add(1)
		time.Sleep(10 * time.Millisecond)
		cur.Add(-1)
		return handlers.Result{}, nil
	})
	var ids []string
	for i := 0; i < 40; i++ {
		ids = append(ids, e.enqueue("data_migration", `{"n":1}`))
	}
	r := e.start(Config{Concurrency: 4}, map[string]handlers.Handler{"data_migration": h})
	waitFor(t, "all completed", func() bool {
		var n int
		_ = e.pool.QueryRow(context.Background(), `SELECT count(*) FROM public.job_queue_all WHERE status = 'completed' AND job_type = 'data_migration'`).Scan(&n)
		return n == 40
	})
	r.stop(t)
	if peak.Load() > 4 || peak.Load() < 2 {
		t.Fatalf("peak concurrency %d (want 2..4: batches fill free slots)", peak.Load())
	}
	for _, id := range ids {
		c, ok := calls.Load(id)
		if !ok || c.(*atomic.Int64).Load() != 1 {
			t.Fatalf("job %s ran %v times", id, c)
		}
		if n := e.auditCount(id, "COMPLETE"); n != 1 {
			t.Fatalf("job %s completed %d times", id, n)
		}
	}
}

// TestNotifyWakes: with a very long poll interval, only NOTIFY can wake
// the worker for a job enqueued after it went idle.
func TestNotifyWakes(t *testing.T) {
	e := newEnv(t)
	var calls sync.Map
	r := e.start(Config{Concurrency: 1, PollInterval: time.Hour, ReclaimInterval: -1},
		map[string]handlers.Handler{"report_generation": modeHandler(&calls)})
	waitFor(t, "LISTEN connection", func() bool { return r.w.listening.Load() })
	time.Sleep(200 * time.Millisecond) // let the first (empty) claim finish and the loop sleep
	id := e.enqueue("report_generation", `{"mode":"ok"}`)
	waitFor(t, "the notified job", func() bool { return e.job(id).Status == "completed" })
	r.stop(t)
}

// TestLeaseLossCancelsHandler: when another claim takes over the job (new
// lease token), the heartbeat reports the loss, the handler's context is
// cancelled with ErrLeaseLost, and its result is discarded.
func TestLeaseLossCancelsHandler(t *testing.T) {
	e := newEnv(t)
	started := make(chan struct{})
	cause := make(chan error, 1)
	h := handlers.Func(func(ctx context.Context, j handlers.Job) (handlers.Result, error) {
		close(started)
		<-ctx.Done()
		cause <- context.Cause(ctx)
		return handlers.Result{Output: json.RawMessage(`{"stale":true}`)}, nil // must be discarded
	})
	id := e.enqueue("report_generation", `{"n":1}`)
	r := e.start(Config{Concurrency: 1, HeartbeatInterval: 100 * time.Millisecond}, map[string]handlers.Handler{"report_generation": h})
	<-started
	e.exec(`UPDATE public.job_queue SET lease_token = gen_random_uuid() WHERE id = $1`, id)
	select {
	case c := <-cause:
		if !errors.Is(c, ErrLeaseLost) {
			t.Fatalf("cause %v", c)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("handler was not cancelled")
	}
	waitFor(t, "discard counted", func() bool {
		return metricValue(r.w.Metrics().Discarded.WithLabelValues("report_generation")) == 1
	})
	r.stop(t)
	if j := e.job(id); j.Status != "processing" || e.auditCount(id, "COMPLETE") != 0 {
		t.Fatalf("the stale result was recorded: %+v", j)
	}
}

// TestReclaimedJobClaimedAgainBySameWorker: a job whose lease was reclaimed
// while its handler still ran is claimed again by the same worker. The old
// run is cancelled as lost (its result discarded), the new run completes the
// job, and the worker's bookkeeping ends with nothing in flight.
func TestReclaimedJobClaimedAgainBySameWorker(t *testing.T) {
	e := newEnv(t)
	var runs atomic.Int64
	firstCause := make(chan error, 1)
	h := handlers.Func(func(ctx context.Context, j handlers.Job) (handlers.Result, error) {
		if runs.Add(1) == 1 {
			<-ctx.Done() // the first run blocks until it is cancelled
			firstCause <- context.Cause(ctx)
			return handlers.Result{Output: json.RawMessage(`{"run":1}`)}, nil // must be discarded
		}
		return handlers.Result{Output: json.RawMessage(`{"run":2}`)}, nil
	})
	id := e.enqueue("report_generation", `{"n":1}`)
	// No heartbeat during the test: only the second claim can notice.
	r := e.start(Config{Concurrency: 2, HeartbeatInterval: time.Hour, ReclaimInterval: -1}, map[string]handlers.Handler{"report_generation": h})
	waitFor(t, "first run", func() bool { return runs.Load() == 1 })
	e.exec(`UPDATE public.job_queue SET heartbeat_at = now() - interval '1 day' WHERE id = $1`, id)
	e.exec(`SELECT public.reclaim_timed_out_jobs()`)
	select {
	case c := <-firstCause:
		if !errors.Is(c, ErrLeaseLost) {
			t.Fatalf("first run cancelled with %v, want ErrLeaseLost", c)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("the first run was not cancelled when the job was claimed again")
	}
	waitFor(t, "completion", func() bool { return e.job(id).Status == "completed" })
	if j := e.job(id); string(j.Result) != `{"run": 2}` || e.auditCount(id, "COMPLETE") != 1 {
		t.Fatalf("job %+v, %d COMPLETE rows", j, e.auditCount(id, "COMPLETE"))
	}
	waitFor(t, "nothing in flight", func() bool { return r.w.inFlight() == 0 })
	r.stop(t)
}

// TestDrainReleases: on stop, a short job finishes within the grace
// period; a long one is cancelled and handed back without consuming an
// attempt.
func TestDrainReleases(t *testing.T) {
	e := newEnv(t)
	var started atomic.Int64
	quickGo := make(chan struct{})
	h := handlers.Func(func(ctx context.Context, j handlers.Job) (handlers.Result, error) {
		started.Add(1)
		var p struct{ Long bool }
		_ = json.Unmarshal(j.Payload, &p)
		if p.Long {
			<-ctx.Done()
			return handlers.Result{}, context.Cause(ctx)
		}
		<-quickGo
		return handlers.Result{}, nil
	})
	long := e.enqueue("report_generation", `{"long":true}`)
	quick := e.enqueue("report_generation", `{"long":false}`)
	r := e.start(Config{Concurrency: 2, ShutdownGrace: 500 * time.Millisecond}, map[string]handlers.Handler{"report_generation": h})
	waitFor(t, "both running", func() bool { return started.Load() == 2 })
	r.cancel()
	time.AfterFunc(100*time.Millisecond, func() { close(quickGo) })
	if err := <-r.done; err != nil {
		t.Fatal(err)
	}
	if j := e.job(quick); j.Status != "completed" {
		t.Fatalf("quick job: %+v", j)
	}
	if j := e.job(long); j.Status != "pending" || j.RetryCount != 0 || j.Token != nil || e.auditCount(long, "RELEASE") != 1 {
		t.Fatalf("long job not released cleanly: %+v", j)
	}
	if v := metricValue(r.w.Metrics().Released.WithLabelValues("report_generation")); v != 1 {
		t.Fatalf("released metric %v", v)
	}
}

func TestMaintenanceModePausesClaiming(t *testing.T) {
	e := newEnv(t)
	e.exec(`UPDATE public.system_configuration SET config_value = 'true' WHERE config_key = 'system.maintenance_mode'`)
	var calls sync.Map
	id := e.enqueue("report_generation", `{"mode":"ok"}`)
	r := e.start(Config{Concurrency: 1}, map[string]handlers.Handler{"report_generation": modeHandler(&calls)})
	waitFor(t, "maintenance observed", func() bool { return metricValue(r.w.Metrics().Maintenance) == 1 })
	time.Sleep(300 * time.Millisecond) // several poll rounds
	if j := e.job(id); j.Status != "pending" {
		t.Fatalf("claimed during maintenance: %+v", j)
	}
	e.exec(`UPDATE public.system_configuration SET config_value = 'false' WHERE config_key = 'system.maintenance_mode'`)
	waitFor(t, "claimed after maintenance", func() bool { return e.job(id).Status == "completed" })
	r.stop(t)
}

func TestBuiltinMaintenanceJobs(t *testing.T) {
	e := newEnv(t)
	e.exec(`INSERT INTO public.audit_log (table_name, record_id, operation, changed_at) VALUES
		('x', 'old', 'TEST', now() - interval '3000 days'), ('x', 'new', 'TEST', now() - interval '1 day')`)
	ac := e.enqueue(TypeAuditCleanup, `{"n":1}`)
	sm := e.enqueue(TypeSystemMaintenance, `{"purge_after_days": 7}`)
	r := e.start(Config{Concurrency: 2, Types: []string{TypeAuditCleanup, TypeSystemMaintenance}}, nil)
	waitFor(t, "maintenance jobs", func() bool { return e.job(ac).Status == "completed" && e.job(sm).Status == "completed" })
	r.stop(t)
	var old, recent int
	_ = e.pool.QueryRow(context.Background(), `SELECT count(*) FILTER (WHERE record_id = 'old'), count(*) FILTER (WHERE record_id = 'new') FROM public.audit_log WHERE table_name = 'x'`).Scan(&old, &recent)
	if old != 0 || recent != 1 {
		t.Fatalf("audit cleanup: old %d recent %d", old, recent)
	}
	var res map[string]any
	_ = json.Unmarshal(e.job(ac).Result, &res)
	if res["deleted"] != float64(1) || res["retention_days"] != float64(2555) {
		t.Fatalf("audit_cleanup result %v", res)
	}
	_ = json.Unmarshal(e.job(sm).Result, &res)
	if _, ok := res["reclaimed"]; !ok || res["purge_after_days"] != float64(7) {
		t.Fatalf("system_maintenance result %v", res)
	}
	var purges int
	_ = e.pool.QueryRow(context.Background(), `SELECT count(*) FROM public.audit_log WHERE table_name = 'audit_log' AND operation = 'PURGE'`).Scan(&purges)
	if purges != 1 {
		t.Fatalf("audit cleanup left %d audit rows about itself", purges)
	}
}

func TestMetricsAndHealthEndpoints(t *testing.T) {
	e := newEnv(t)
	var calls sync.Map
	id := e.enqueue("report_generation", `{"mode":"ok"}`)
	r := e.start(Config{Concurrency: 1, MetricsAddr: "127.0.0.1:0"}, map[string]handlers.Handler{"report_generation": modeHandler(&calls)})
	waitFor(t, "job", func() bool { return e.job(id).Status == "completed" })
	base := "http://" + r.w.MetricsAddr()
	get := func(path string) (int, string) {
		resp, err := http.Get(base + path)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	waitFor(t, "completion counted", func() bool {
		_, body := get("/metrics")
		return strings.Contains(body, `v3_worker_jobs_completed_total{job_type="report_generation"} 1`)
	})
	_, body := get("/metrics")
	for _, want := range []string{`v3_worker_jobs_claimed_total{job_type="report_generation"} 1`, "v3_worker_job_duration_seconds_bucket",
		"v3_worker_jobs_in_flight 0", "v3_worker_heartbeat_failures_total 0"} {
		if !strings.Contains(body, want) {
			t.Fatalf("/metrics lacks %q", want)
		}
	}
	if code, _ := get("/healthz"); code != 200 {
		t.Fatalf("/healthz %d", code)
	}
	if code, _ := get("/readyz"); code != 200 {
		t.Fatalf("/readyz %d", code)
	}
	r.w.draining.Store(true)
	if code, _ := get("/readyz"); code != 503 {
		t.Fatalf("/readyz while draining: %d", code)
	}
	r.stop(t)
}

func TestConfigErrors(t *testing.T) {
	_, err := New(Config{Types: []string{"ai_processing"}}, nil, nil)
	var nh *NoHandlerError
	if !errors.As(err, &nh) || !strings.Contains(err.Error(), "ai_processing") {
		t.Fatalf("missing handler: %v", err)
	}
	_, err = New(Config{Handlers: map[string]handlers.Spec{"report_generation": {Kind: "smtp"}}}, nil, nil)
	if err == nil || !strings.Contains(err.Error(), "unknown kind") {
		t.Fatalf("bad kind: %v", err)
	}
	// A typo in a job type or lane is refused at start, not retried forever
	// against the claim function.
	exec := handlers.Spec{Kind: "exec", Command: []string{"true"}}
	for _, c := range []struct {
		cfg  Config
		want string
	}{
		{Config{Handlers: map[string]handlers.Spec{"ai_procesing": exec}}, `"ai_procesing" is not a job type the queue knows`},
		{Config{Types: []string{"shell_file_processin"}}, `unknown job type "shell_file_processin"`},
		{Config{Lanes: []string{"ai_queue_simpl"}}, `unknown lane "ai_queue_simpl"`},
	} {
		if _, err := New(c.cfg, nil, nil); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Fatalf("want %q, got %v", c.want, err)
		}
	}
	if !Transient(errors.New("conn closed")) {
		t.Fatal("a network error must be transient")
	}
}

func metricValue(m prometheus.Metric) float64 {
	var d dto.Metric
	if err := m.Write(&d); err != nil {
		return -1
	}
	if d.Counter != nil {
		return d.Counter.GetValue()
	}
	if d.Gauge != nil {
		return d.Gauge.GetValue()
	}
	return -1
}

// TestExitWhenIdle: with ExitWhenIdle the worker runs every claimable job,
// including a retry that comes due while it waits, then returns nil on its
// own once nothing has run or been claimable for that long.
func TestExitWhenIdle(t *testing.T) {
	e := newEnv(t)
	e.exec(`UPDATE public.system_configuration SET config_value = '1' WHERE config_key = 'queue.retry_base_delay_seconds'`)
	var calls sync.Map
	var flaky atomic.Int64
	h := handlers.Func(func(ctx context.Context, j handlers.Job) (handlers.Result, error) {
		var p struct{ Flaky bool }
		_ = json.Unmarshal(j.Payload, &p)
		if p.Flaky && flaky.Add(1) == 1 {
			return handlers.Result{}, errors.New("temporary")
		}
		return modeHandler(&calls).Handle(ctx, j)
	})
	ok := e.enqueue("report_generation", `{"mode":"ok"}`)
	bad := e.enqueue("report_generation", `{"mode":"permanent"}`)
	retried := e.enqueue("report_generation", `{"flaky":true}`)
	later := e.enqueue("data_migration", `{"n":1}`)
	e.exec(`UPDATE public.job_queue SET scheduled_at = now() + interval '1 hour' WHERE id = $1`, later)

	const idle = 1500 * time.Millisecond
	start := time.Now()
	r := e.start(Config{Concurrency: 2, ExitWhenIdle: idle, PollInterval: time.Hour},
		map[string]handlers.Handler{"report_generation": h, "data_migration": modeHandler(&calls)})
	select {
	case err := <-r.done:
		if err != nil {
			t.Fatalf("Run: %v", err)
		}
	case <-time.After(45 * time.Second):
		t.Fatal("the worker did not exit when idle")
	}
	if d := time.Since(start); d < idle {
		t.Fatalf("exited after %s, before the idle period", d)
	}
	if j := e.job(ok); j.Status != "completed" {
		t.Fatalf("ok job: %+v", j)
	}
	if j := e.job(bad); j.Status != "dead_letter" {
		t.Fatalf("permanent job: %+v", j)
	}
	if j := e.job(retried); j.Status != "completed" || j.RetryCount != 1 {
		t.Fatalf("the retry that came due while idle was not run: %+v", j)
	}
	if j := e.job(later); j.Status != "pending" {
		t.Fatalf("a job scheduled an hour ahead was run: %+v", j)
	}
	logs := e.logs.String()
	for _, want := range []string{"queue drained", "completed=2", "failed_will_retry=1", "failed_final=1"} {
		if !strings.Contains(logs, want) {
			t.Fatalf("logs lack %q", want)
		}
	}
}

// TestUsageMetered: a result with Usage is metered for the job's profile in
// the transaction that completes it.
func TestUsageMetered(t *testing.T) {
	e := newEnv(t)
	e.exec(`INSERT INTO auth.users (id, email) VALUES ('00000000-0000-4000-8000-0000000000aa', 'meter@example.test')`)
	e.exec(`INSERT INTO public.user_profiles (id, account_owner_id, display_name)
		VALUES ('00000000-0000-4000-8000-0000000000bb', '00000000-0000-4000-8000-0000000000aa', 'Meter')`)
	h := handlers.Func(func(ctx context.Context, j handlers.Job) (handlers.Result, error) {
		return handlers.Result{Output: json.RawMessage(`{"ok":true}`), Usage: &handlers.Usage{TotalTokens: 321}}, nil
	})
	id := e.enqueue("ai_processing", `{"patient_id":"00000000-0000-4000-8000-0000000000bb"}`)
	r := e.start(Config{Concurrency: 1, Types: []string{"ai_processing"}}, map[string]handlers.Handler{"ai_processing": h})
	waitFor(t, "job", func() bool { return e.job(id).Status == "completed" })
	r.stop(t)
	var tokens int
	if err := e.pool.QueryRow(context.Background(), `SELECT coalesce(sum(tokens), 0) FROM public.usage_events
		WHERE event_type = 'ai_processing_completed' AND job_id = $1`, id).Scan(&tokens); err != nil || tokens != 321 {
		t.Fatalf("metered tokens %d, %v", tokens, err)
	}
}
