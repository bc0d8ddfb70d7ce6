package faults

import (
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/v3ctl/v3ctl/internal/devdb"
	"github.com/v3ctl/v3ctl/internal/testdb"
)

// size scales a scenario: the quick variants run in `go test ./...`, the
// long ones under the faults build tag.
type size struct {
	Jobs        int
	Workers     int
	Concurrency int
	// HandlerDelay is the upper bound of the ledger's random per-job delay,
	// so that kills land on in-flight jobs.
	HandlerDelay time.Duration
	Timeout      time.Duration
}

var quick = size{Jobs: 500, Workers: 2, Concurrency: 4, HandlerDelay: 30 * time.Millisecond, Timeout: 2 * time.Minute}

func logReport(t *testing.T, name string, st runStats, extra string) {
	t.Helper()
	msg := fmt.Sprintf("%s: %d jobs, %d completions, %d executions (%d jobs executed more than once), %d workers killed%s",
		name, st.Jobs, st.Completions, st.Executions, st.ReExecuted, st.Kills, extra)
	t.Log(msg)
	if f := os.Getenv("V3CTL_FAULTS_REPORT"); f != "" {
		if fh, err := os.OpenFile(f, os.O_APPEND|os.O_CREATE|os.O_WRONLY, 0o644); err == nil {
			fmt.Fprintln(fh, msg)
			fh.Close()
		}
	}
}

// killWorkers: SIGKILL workers at random moments (and start replacements)
// while the queue drains.
func killWorkers(t *testing.T, url string, sz size) {
	r := newRig(t, url, sz.HandlerDelay)
	r.enqueue(sz.Jobs)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	r.reclaimer(ctx)
	for i := 0; i < sz.Workers; i++ {
		r.startWorker(sz.Concurrency)
	}
	killerDone := make(chan struct{})
	go func() {
		defer close(killerDone)
		for {
			select {
			case <-ctx.Done():
				return
			case <-time.After(time.Duration(150+rand.IntN(450)) * time.Millisecond):
			}
			fin, unf, err := r.progress(ctx)
			if err != nil || unf == 0 || fin > sz.Jobs*95/100 {
				// Leave the tail alone so the run ends with live workers.
				if err == nil && unf == 0 {
					return
				}
				continue
			}
			if r.killRandom() != 0 {
				r.startWorker(sz.Concurrency)
			}
		}
	}()
	took := r.waitDone(sz.Timeout)
	cancel()
	<-killerDone
	st := r.verify()
	if st.Kills == 0 {
		t.Errorf("no worker was killed during the run: the scenario did not exercise anything")
	}
	if r.reclaims() == 0 {
		t.Errorf("no job was reclaimed from a killed worker: the kills did not land on in-flight jobs")
	}
	logReport(t, "SIGKILL workers", st, fmt.Sprintf(", drained in %s", took.Round(time.Millisecond)))
}

// restartPostgres: restart the server (immediate mode: a crash) mid-run.
func restartPostgres(t *testing.T, sz size) {
	o, url := ownServer(t)
	r := newRig(t, url, sz.HandlerDelay)
	r.enqueue(sz.Jobs)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	r.reclaimer(ctx)
	for i := 0; i < sz.Workers; i++ {
		r.startWorker(sz.Concurrency)
	}
	waitFinished(t, r, sz.Jobs/3, sz.Timeout)
	fin, _, err := r.progress(ctx) // just before the crash
	if err != nil {
		t.Fatalf("progress before the restart: %v", err)
	}
	rctx, rcancel := context.WithTimeout(ctx, 2*time.Minute)
	if _, err := devdb.Restart(rctx, o, "immediate"); err != nil {
		rcancel()
		t.Fatalf("restart PostgreSQL: %v", err)
	}
	rcancel()
	took := r.waitDone(sz.Timeout)
	st := r.verify()
	if fin >= sz.Jobs {
		t.Errorf("the run had already finished when PostgreSQL restarted; the scenario did not exercise anything")
	}
	logReport(t, "PostgreSQL restarted mid-run", st, fmt.Sprintf(", %d finished before the restart, rest drained in %s", fin, took.Round(time.Millisecond)))
}

// waitFinished waits until at least n jobs are finished.
func waitFinished(t *testing.T, r *rig, n int, timeout time.Duration) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		fin, _, err := r.progress(context.Background())
		if err == nil && fin >= n {
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("fewer than %d jobs finished within %s", n, timeout)
}

// terminateBackends: pg_terminate_backend every worker connection, several
// times, mid-run.
func terminateBackends(t *testing.T, url string, sz size) {
	r := newRig(t, url, sz.HandlerDelay)
	r.enqueue(sz.Jobs)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	r.reclaimer(ctx)
	for i := 0; i < sz.Workers; i++ {
		r.startWorker(sz.Concurrency)
	}
	terminated, rounds := 0, 0
	for _, frac := range []int{20, 45, 70} {
		waitFinished(t, r, sz.Jobs*frac/100, sz.Timeout)
		n, err := terminateWorkers(ctx, r.pool)
		if err != nil {
			t.Fatal(err)
		}
		terminated += n
		rounds++
	}
	took := r.waitDone(sz.Timeout)
	st := r.verify()
	if terminated == 0 {
		t.Errorf("no worker connection was terminated; the scenario did not exercise anything")
	}
	logReport(t, "pg_terminate_backend mid-run", st, fmt.Sprintf(", %d connections terminated in %d rounds, drained in %s", terminated, rounds, took.Round(time.Millisecond)))
}

// xminPinned: drain the same number of jobs twice, the second time with a
// transaction holding its snapshot (xmin) open; report throughput and the
// dead tuples vacuum could not remove. A report, not a threshold.
func xminPinned(t *testing.T, url string, sz size) {
	r := newRig(t, url, 0)
	ctx := context.Background()
	run := func() (time.Duration, deadTuples) {
		r.jobIDs = nil
		if _, err := r.pool.Exec(ctx, `DELETE FROM public.job_queue_archive WHERE job_type = $1 AND job_name = $2`, faultType, faultName); err != nil {
			t.Fatal(err)
		}
		r.enqueue(sz.Jobs)
		start := time.Now()
		for i := 0; i < sz.Workers; i++ {
			r.startWorker(sz.Concurrency)
		}
		r.waitDone(sz.Timeout)
		took := time.Since(start)
		r.stopAll()
		r.verify()
		// Let autovacuum have its chance, then vacuum explicitly: what is
		// left dead is what the pinned xmin protects.
		if _, err := r.pool.Exec(ctx, `VACUUM public.job_queue`); err != nil {
			t.Fatal(err)
		}
		return took, readDead(t, r)
	}
	baseTook, baseDead := run()
	holder, err := pgx.Connect(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	defer holder.Close(ctx)
	tx, err := holder.BeginTx(ctx, pgx.TxOptions{IsoLevel: pgx.RepeatableRead})
	if err != nil {
		t.Fatal(err)
	}
	var xid int64
	if err := tx.QueryRow(ctx, `SELECT txid_current()`).Scan(&xid); err != nil {
		t.Fatal(err)
	}
	pinTook, pinDead := run()
	_ = tx.Rollback(ctx)
	if _, err := r.pool.Exec(ctx, `VACUUM public.job_queue`); err != nil {
		t.Fatal(err)
	}
	after := readDead(t, r)
	rate := func(d time.Duration) float64 { return float64(sz.Jobs) / d.Seconds() }
	msg := fmt.Sprintf("xmin pinned: %d jobs; baseline %.0f jobs/s (job_queue dead tuples after VACUUM %d), with xmin pinned %.0f jobs/s (%.0f%% of baseline; dead tuples VACUUM could not remove %d), after releasing it %d",
		sz.Jobs, rate(baseTook), baseDead.queue, rate(pinTook), 100*rate(pinTook)/rate(baseTook), pinDead.queue, after.queue)
	t.Log(msg)
	if f := os.Getenv("V3CTL_FAULTS_REPORT"); f != "" {
		if fh, err := os.OpenFile(f, os.O_APPEND|os.O_CREATE|os.O_WRONLY, 0o644); err == nil {
			fmt.Fprintln(fh, msg)
			fh.Close()
		}
	}
	if pinDead.queue < int64(sz.Jobs/2) {
		t.Errorf("with xmin pinned, VACUUM left only %d dead tuples in job_queue for %d jobs: the snapshot was not holding them", pinDead.queue, sz.Jobs)
	}
	if after.queue >= pinDead.queue {
		t.Errorf("releasing xmin did not let VACUUM remove dead tuples (%d before, %d after)", pinDead.queue, after.queue)
	}
}

type deadTuples struct{ queue int64 }

// readDead counts dead tuples in job_queue exactly (pgstattuple) when the
// extension is available, else from the statistics collector.
func readDead(t *testing.T, r *rig) deadTuples {
	t.Helper()
	ctx := context.Background()
	var d deadTuples
	if _, err := r.pool.Exec(ctx, `CREATE EXTENSION IF NOT EXISTS pgstattuple`); err == nil {
		if err := r.pool.QueryRow(ctx, `SELECT dead_tuple_count FROM pgstattuple('public.job_queue')`).Scan(&d.queue); err == nil {
			return d
		}
	}
	time.Sleep(1500 * time.Millisecond) // statistics are flushed about once a second
	if err := r.pool.QueryRow(ctx, `SELECT n_dead_tup FROM pg_stat_user_tables WHERE relid = 'public.job_queue'::regclass`).Scan(&d.queue); err != nil {
		t.Fatal(err)
	}
	return d
}

func TestKillWorkersQuick(t *testing.T) {
	killWorkers(t, testdb.NewURL(t), quick)
}

func TestTerminateBackendsQuick(t *testing.T) {
	terminateBackends(t, testdb.NewURL(t), quick)
}

func TestRestartPostgresQuick(t *testing.T) {
	if testing.Short() {
		t.Skip("starts and restarts its own PostgreSQL")
	}
	restartPostgres(t, quick)
}

func TestXminPinnedQuick(t *testing.T) {
	xminPinned(t, testdb.NewURL(t), size{Jobs: 300, Workers: 2, Concurrency: 4, Timeout: 2 * time.Minute})
}
