package faults

import (
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/v3ctl/v3ctl/internal/bench"
	"github.com/v3ctl/v3ctl/internal/devdb"
	"github.com/v3ctl/v3ctl/internal/queue"
	"github.com/v3ctl/v3ctl/internal/sysconfig"
)

// The fault runs use a lane-less job type without a built-in handler, so
// the only handler is the ledger.
const (
	faultType = "report_generation"
	faultName = "v3ctl-fault"
)

var (
	binOnce sync.Once
	binPath string
	binErr  error
	binDir  string
)

func TestMain(m *testing.M) {
	code := m.Run()
	if binDir != "" {
		_ = os.RemoveAll(binDir)
	}
	os.Exit(code)
}

// v3ctlBinary builds cmd/v3ctl once per test binary.
func v3ctlBinary(t testing.TB) string {
	t.Helper()
	binOnce.Do(func() {
		binDir, binErr = os.MkdirTemp("", "v3ctl-faults-bin-")
		if binErr != nil {
			return
		}
		binPath = filepath.Join(binDir, "v3ctl")
		cmd := exec.Command("go", "build", "-o", binPath, "./cmd/v3ctl")
		cmd.Dir = filepath.Join("..", "..")
		out, err := cmd.CombinedOutput()
		if err != nil {
			binErr = fmt.Errorf("go build ./cmd/v3ctl: %v\n%s", err, out)
		}
	})
	if binErr != nil {
		t.Fatal(binErr)
	}
	return binPath
}

// ledgerEntry is one execution of a job's handler.
type ledgerEntry struct {
	JobID   string
	Attempt int
	At      time.Time
}

// ledger is the handler: an HTTP endpoint the workers' http handler POSTs
// every job to. It records each execution in memory, independently of the
// database (so it survives database restarts), and answers 200.
//
// A job whose payload has "hold_ms" is held exactly that long; otherwise the
// hold is random up to the ledger's delay. A hold ends early when the worker
// drops the request (handler cancelled, process killed); an execution whose
// hold ran to the end is also recorded in finished.
type ledger struct {
	mu       sync.Mutex
	entries  []ledgerEntry
	finished []ledgerEntry
	srv      *httptest.Server
	delay    time.Duration
	count    atomic.Int64
}

func newLedger(t testing.TB, delay time.Duration) *ledger {
	l := &ledger{delay: delay}
	l.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		id := r.Header.Get("X-V3-Job-Id")
		att, _ := strconv.Atoi(r.Header.Get("X-V3-Attempt"))
		if id == "" {
			http.Error(w, "no job id", http.StatusBadRequest)
			return
		}
		var env struct {
			Payload struct {
				HoldMS int64 `json:"hold_ms"`
			} `json:"payload"`
		}
		_ = json.NewDecoder(r.Body).Decode(&env)
		l.mu.Lock()
		l.entries = append(l.entries, ledgerEntry{JobID: id, Attempt: att, At: time.Now()})
		l.mu.Unlock()
		l.count.Add(1)
		hold := time.Duration(env.Payload.HoldMS) * time.Millisecond
		if hold <= 0 && l.delay > 0 {
			hold = time.Duration(rand.Int64N(int64(l.delay)))
		}
		if hold > 0 {
			t := time.NewTimer(hold)
			select {
			case <-t.C:
			case <-r.Context().Done():
				t.Stop()
				return
			}
		}
		l.mu.Lock()
		l.finished = append(l.finished, ledgerEntry{JobID: id, Attempt: att, At: time.Now()})
		l.mu.Unlock()
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write([]byte(`{"ok":true}`))
	}))
	t.Cleanup(l.srv.Close)
	return l
}

func (l *ledger) byJob() map[string][]ledgerEntry {
	l.mu.Lock()
	defer l.mu.Unlock()
	return groupByJob(l.entries)
}

// finishedByJob lists the executions whose hold ran to the end.
func (l *ledger) finishedByJob() map[string][]ledgerEntry {
	l.mu.Lock()
	defer l.mu.Unlock()
	return groupByJob(l.finished)
}

// startedAfter lists the executions that started after t.
func (l *ledger) startedAfter(t time.Time) []ledgerEntry {
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []ledgerEntry
	for _, e := range l.entries {
		if e.At.After(t) {
			out = append(out, e)
		}
	}
	return out
}

func groupByJob(es []ledgerEntry) map[string][]ledgerEntry {
	m := map[string][]ledgerEntry{}
	for _, e := range es {
		m[e.JobID] = append(m[e.JobID], e)
	}
	return m
}

// rig is one fault run: a database, the ledger, the worker processes.
type rig struct {
	t       testing.TB
	url     string
	pool    *pgxpool.Pool
	bin     string
	cfg     string
	ledger  *ledger
	logDir  string
	mu      sync.Mutex
	workers map[int]*proc
	nextID  int
	kills   atomic.Int64
	jobIDs  []string
}

// newRig prepares the database at url (already migrated): fast timeouts so
// jobs of killed workers come back within seconds, and the ledger handler.
func newRig(t testing.TB, url string, handlerDelay time.Duration) *rig {
	t.Helper()
	ctx := context.Background()
	cfg, err := pgxpool.ParseConfig(url)
	if err != nil {
		t.Fatal(err)
	}
	cfg.MaxConns = 8
	cfg.ConnConfig.RuntimeParams["application_name"] = "v3ctl-faults"
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	for k, v := range map[string]string{
		"worker.timeout_seconds":            "3",
		"worker.heartbeat_interval_seconds": "1",
		"worker.reclaim_jitter_max_seconds": "0",
	} {
		if _, err := sysconfig.Set(ctx, pool, k, json.RawMessage(v), "faults", "fault suite: fast reclaim", false); err != nil {
			t.Fatalf("set %s: %v", k, err)
		}
	}
	r := &rig{t: t, url: url, pool: pool, bin: v3ctlBinary(t), ledger: newLedger(t, handlerDelay),
		logDir: t.TempDir(), workers: map[int]*proc{}}
	r.cfg = filepath.Join(r.logDir, "v3ctl.yaml")
	conf := fmt.Sprintf(`worker:
  handlers:
    %s:
      kind: http
      url: %s/job
      timeout: 30s
`, faultType, r.ledger.srv.URL)
	if err := os.WriteFile(r.cfg, []byte(conf), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(r.stopAll)
	return r
}

// enqueue adds n jobs (max_retries high enough that repeated kills never
// dead-letter a job) and remembers their ids.
func (r *rig) enqueue(n int) {
	r.t.Helper()
	ctx := context.Background()
	if err := bench.FillJobs(ctx, r.pool, faultType, faultName, n, 100); err != nil {
		r.t.Fatal(err)
	}
	rows, err := r.pool.Query(ctx, `SELECT id::text FROM public.job_queue WHERE job_type = $1 AND job_name = $2`, faultType, faultName)
	if err != nil {
		r.t.Fatal(err)
	}
	defer rows.Close()
	for rows.Next() {
		var id string
		if err := rows.Scan(&id); err != nil {
			r.t.Fatal(err)
		}
		r.jobIDs = append(r.jobIDs, id)
	}
	if len(r.jobIDs) != n {
		r.t.Fatalf("enqueued %d jobs, found %d", n, len(r.jobIDs))
	}
}

// workerArgs is the command line of one worker process.
func (r *rig) workerArgs(id string, concurrency int) []string {
	return []string{"--config", r.cfg, "--database-url", r.url, "worker", "run",
		"--worker-id", id, "--concurrency", strconv.Itoa(concurrency), "--types", faultType,
		"--poll-interval", "500ms", "--shutdown-grace", "2s", "--reclaim-interval", "1s", "--log-level", "warn"}
}

// startWorker starts one `v3ctl worker run` process.
func (r *rig) startWorker(concurrency int) int {
	r.t.Helper()
	return r.startWorkerWith(concurrency)
}

// startWorkerWith starts one `v3ctl worker run` process with extra flags
// appended to the rig's (a repeated flag overrides the rig's value).
func (r *rig) startWorkerWith(concurrency int, extra ...string) int {
	r.t.Helper()
	r.mu.Lock()
	defer r.mu.Unlock()
	r.nextID++
	n := r.nextID
	id := workerName(n)
	cmd := exec.Command(r.bin, append(r.workerArgs(id, concurrency), extra...)...)
	logf, err := os.Create(filepath.Join(r.logDir, id+".log"))
	if err != nil {
		r.t.Fatal(err)
	}
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.Env = append(os.Environ(), "NO_COLOR=1")
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		r.t.Fatal(err)
	}
	p := &proc{cmd: cmd, done: make(chan struct{})}
	r.workers[n] = p
	go func() { _ = cmd.Wait(); logf.Close(); close(p.done) }()
	return n
}

// workerName is the worker id (and log file name) of worker number n.
func workerName(n int) string { return fmt.Sprintf("fault-w%d", n) }

// proc returns worker number n (nil once it has been killed or stopped).
func (r *rig) proc(n int) *proc {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.workers[n]
}

// proc is a running worker process; done closes once it has been reaped.
type proc struct {
	cmd  *exec.Cmd
	done chan struct{}
}

// killRandom SIGKILLs one running worker (its whole process group) and
// returns its number, or 0 when none runs.
func (r *rig) killRandom() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	var ids []int
	for id := range r.workers {
		ids = append(ids, id)
	}
	if len(ids) == 0 {
		return 0
	}
	sort.Ints(ids)
	id := ids[rand.IntN(len(ids))]
	cmd := r.workers[id].cmd
	_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
	delete(r.workers, id)
	r.kills.Add(1)
	return id
}

func (r *rig) stopAll() {
	r.mu.Lock()
	defer r.mu.Unlock()
	for id, p := range r.workers {
		_ = p.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-p.done:
		case <-time.After(5 * time.Second):
		}
		_ = syscall.Kill(-p.cmd.Process.Pid, syscall.SIGKILL)
		delete(r.workers, id)
	}
}

// reclaimer plays the role of the cron job: reclaim_timed_out_jobs twice a
// second, errors ignored (the database may be restarting).
func (r *rig) reclaimer(ctx context.Context) {
	go func() {
		t := time.NewTicker(500 * time.Millisecond)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
				c, cancel := context.WithTimeout(ctx, 5*time.Second)
				_, _ = queue.Reclaim(c, r.pool, 1000)
				cancel()
			}
		}
	}()
}

// progress counts finished and unfinished jobs of the run.
func (r *rig) progress(ctx context.Context) (finished, unfinished int, err error) {
	err = r.pool.QueryRow(ctx, `SELECT
  (SELECT count(*) FROM public.job_queue_archive WHERE job_type = $1 AND job_name = $2),
  (SELECT count(*) FROM public.job_queue WHERE job_type = $1 AND job_name = $2)`, faultType, faultName).Scan(&finished, &unfinished)
	return
}

// waitDone polls until no job of the run is unfinished, or fails the test
// after timeout. Database errors (a restart) are tolerated.
func (r *rig) waitDone(timeout time.Duration) time.Duration {
	r.t.Helper()
	start := time.Now()
	deadline := start.Add(timeout)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		fin, unf, err := r.progress(ctx)
		cancel()
		if err == nil && unf == 0 && fin >= len(r.jobIDs) {
			return time.Since(start)
		}
		if time.Now().After(deadline) {
			r.t.Fatalf("run did not finish within %s: %d finished, %d unfinished (err %v); worker logs in %s",
				timeout, fin, unf, err, r.logDir)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// runStats summarises a verified run.
type runStats struct {
	Jobs, Executions, ReExecuted, Completions int
	Kills                                     int64
}

// verify checks the exactly-once invariants (see the package doc).
func (r *rig) verify() runStats {
	r.t.Helper()
	ctx := context.Background()
	st := runStats{Jobs: len(r.jobIDs), Kills: r.kills.Load()}
	var unfinished int
	if err := r.pool.QueryRow(ctx, `SELECT count(*) FROM public.job_queue WHERE job_type = $1 AND job_name = $2`, faultType, faultName).Scan(&unfinished); err != nil {
		r.t.Fatal(err)
	}
	if unfinished != 0 {
		r.t.Errorf("%d jobs still unfinished", unfinished)
	}
	type arch struct {
		status  string
		attempt int
		history int
	}
	archived := map[string]arch{}
	rows, err := r.pool.Query(ctx, `SELECT id::text, status, retry_count + 1, jsonb_array_length(error_history)
FROM public.job_queue_archive WHERE job_type = $1 AND job_name = $2`, faultType, faultName)
	if err != nil {
		r.t.Fatal(err)
	}
	for rows.Next() {
		var id string
		var a arch
		if err := rows.Scan(&id, &a.status, &a.attempt, &a.history); err != nil {
			r.t.Fatal(err)
		}
		archived[id] = a
	}
	rows.Close()
	completes := map[string]int{}
	takenBack := map[string]int{}
	rows, err = r.pool.Query(ctx, `SELECT record_id, count(*) FILTER (WHERE operation = 'COMPLETE'),
       count(*) FILTER (WHERE operation IN ('RECLAIM', 'RELEASE', 'FAIL', 'RETRY', 'RESCHEDULE'))
FROM public.audit_log WHERE table_name = 'job_queue' AND record_id = ANY ($1) GROUP BY record_id`, r.jobIDs)
	if err != nil {
		r.t.Fatal(err)
	}
	for rows.Next() {
		var id string
		var c, b int
		if err := rows.Scan(&id, &c, &b); err != nil {
			r.t.Fatal(err)
		}
		completes[id], takenBack[id] = c, b
	}
	rows.Close()
	led := r.ledger.byJob()
	done := r.ledger.finishedByJob()
	bad := 0
	report := func(format string, a ...any) {
		bad++
		if bad <= 10 {
			r.t.Errorf(format, a...)
		}
	}
	for _, id := range r.jobIDs {
		a, ok := archived[id]
		switch {
		case !ok:
			report("job %s lost: not in the archive", id)
			continue
		case a.status != "completed":
			report("job %s finished as %s, want completed", id, a.status)
		}
		if completes[id] != 1 {
			report("job %s has %d COMPLETE audit rows, want exactly 1", id, completes[id])
		}
		st.Completions += completes[id]
		execs := led[id]
		st.Executions += len(execs)
		// The completion must come from an execution of that very attempt
		// whose handler ran to the end (the ledger answered it).
		found := false
		for _, e := range done[id] {
			if e.Attempt == a.attempt {
				found = true
			}
		}
		if !found {
			report("job %s completed at attempt %d but the ledger has no finished execution of that attempt (%d executions)", id, a.attempt, len(execs))
		}
		if len(execs) > 1 {
			st.ReExecuted++
		}
		// Each execution beyond the first needs the queue to have taken the
		// job back from a holder once (reclaim, release, failure, retry or
		// reschedule); more executions than that mean a job ran twice under
		// one claim.
		if len(execs) > 1+takenBack[id] {
			report("job %s executed %d times but the queue took it back from a holder only %d time(s)", id, len(execs), takenBack[id])
		}
	}
	if len(archived) != len(r.jobIDs) {
		report("archive holds %d jobs of the run, want %d", len(archived), len(r.jobIDs))
	}
	if bad > 10 {
		r.t.Errorf("... and %d more violations", bad-10)
	}
	return st
}

// ownServer starts a private PostgreSQL instance for tests that restart it,
// migrated database included; it is stopped and deleted at cleanup.
func ownServer(t testing.TB) (devdb.Options, string) {
	t.Helper()
	base := t.TempDir()
	if os.Geteuid() == 0 {
		if err := os.Chmod(base, 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(filepath.Dir(base), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	// Durable (fsync, synchronous_commit on): with synchronous_commit off an
	// immediate stop loses commits the clients were told about (a claim the
	// worker already acted on), which production settings never do.
	o := devdb.Options{Dir: filepath.Join(base, "pg"), Fast: false}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	st, _, err := devdb.Up(ctx, o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _, _, _ = devdb.Down(context.Background(), o) })
	u, err := bench.FreshDatabase(ctx, st.URLFor("postgres"), "v3ctl_faults")
	if err != nil {
		t.Fatal(err)
	}
	return o, u
}

// terminateWorkers ends every worker backend of the run's database.
func terminateWorkers(ctx context.Context, pool *pgxpool.Pool) (int, error) {
	var n int
	err := pool.QueryRow(ctx, `SELECT count(*) FILTER (WHERE pg_terminate_backend(pid))
FROM pg_stat_activity WHERE datname = current_database() AND backend_type = 'client backend'
  AND application_name <> 'v3ctl-faults'`).Scan(&n)
	return n, err
}

// reclaims counts the RECLAIM audit rows of the run's jobs: jobs taken back
// from a holder that stopped heartbeating.
func (r *rig) reclaims() int {
	r.t.Helper()
	var n int
	if err := r.pool.QueryRow(context.Background(), `SELECT count(*) FROM public.audit_log
		WHERE table_name = 'job_queue' AND operation = 'RECLAIM' AND record_id = ANY ($1)`, r.jobIDs).Scan(&n); err != nil {
		r.t.Fatal(err)
	}
	return n
}
