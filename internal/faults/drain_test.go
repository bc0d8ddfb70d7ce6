package faults

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/v3ctl/v3ctl/internal/queue"
	"github.com/v3ctl/v3ctl/internal/testdb"
)

// Graceful shutdown of a real `v3ctl worker run` process (see "SIGINT/SIGTERM"
// in `v3ctl worker run --help`): after the first SIGTERM the worker claims
// nothing more, lets running jobs finish within --shutdown-grace, hands the
// rest back without consuming an attempt and exits 0; a second signal ends
// it at once and its jobs stay processing until reclaim recovers them.

// exitSlack bounds how long after its grace period (or after a second
// signal) a worker may take to exit. A correctness bound, not a timing
// measurement.
const exitSlack = 10 * time.Second

// claimSlack: a handler that starts later than this after SIGTERM was
// claimed after the signal.
const claimSlack = time.Second

// jobRow is a job's queue state, wherever it is (job_queue or archive).
type jobRow struct {
	Archived        bool
	Status          string
	RetryCount      int
	RescheduleCount int
	Errors          int
	WorkerID        *string
}

func (r *rig) jobRows(ctx context.Context, ids []string) map[string]jobRow {
	r.t.Helper()
	rows, err := r.pool.Query(ctx, `SELECT id::text, false, status, retry_count, reschedule_count, jsonb_array_length(error_history), worker_id
FROM public.job_queue WHERE id = ANY ($1::uuid[])
UNION ALL
SELECT id::text, true, status, retry_count, reschedule_count, jsonb_array_length(error_history), worker_id
FROM public.job_queue_archive WHERE id = ANY ($1::uuid[])`, ids)
	if err != nil {
		r.t.Fatal(err)
	}
	out := map[string]jobRow{}
	for rows.Next() {
		var id string
		var j jobRow
		if err := rows.Scan(&id, &j.Archived, &j.Status, &j.RetryCount, &j.RescheduleCount, &j.Errors, &j.WorkerID); err != nil {
			r.t.Fatal(err)
		}
		out[id] = j
	}
	if err := rows.Err(); err != nil {
		r.t.Fatal(err)
	}
	return out
}

// auditCounts counts the audit rows of one operation per job.
func (r *rig) auditCounts(ctx context.Context, op string, ids []string) map[string]int {
	r.t.Helper()
	rows, err := r.pool.Query(ctx, `SELECT record_id, count(*)::int FROM public.audit_log
WHERE table_name = 'job_queue' AND operation = $1 AND record_id = ANY ($2) GROUP BY record_id`, op, ids)
	if err != nil {
		r.t.Fatal(err)
	}
	out := map[string]int{}
	for rows.Next() {
		var id string
		var n int
		if err := rows.Scan(&id, &n); err != nil {
			r.t.Fatal(err)
		}
		out[id] = n
	}
	return out
}

// enqueueHeld adds n jobs the ledger holds for hold each and returns their
// ids.
func (r *rig) enqueueHeld(n int, hold time.Duration) []string {
	r.t.Helper()
	rows, err := r.pool.Query(context.Background(), `SELECT e.job_id::text FROM pg_catalog.generate_series(1, $1::int) g,
  LATERAL public.enqueue_job_v3($2, $3, pg_catalog.jsonb_build_object('n', g, 'hold_ms', $4::bigint), 'standard', 5,
                                p_max_retries => 3) e`, n, faultType, faultName, hold.Milliseconds())
	if err != nil {
		r.t.Fatal(err)
	}
	ids, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		r.t.Fatal(err)
	}
	r.jobIDs = append(r.jobIDs, ids...)
	return ids
}

// waitStarted waits until the ledger has seen n executions.
func (r *rig) waitStarted(n int, timeout time.Duration) {
	r.t.Helper()
	deadline := time.Now().Add(timeout)
	for r.ledger.count.Load() < int64(n) {
		if time.Now().After(deadline) {
			r.t.Fatalf("only %d of %d handlers started within %s; worker logs in %s", r.ledger.count.Load(), n, timeout, r.logDir)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// waitLog waits until worker n's log contains s.
func (r *rig) waitLog(n int, s string, timeout time.Duration) {
	r.t.Helper()
	path := filepath.Join(r.logDir, workerName(n)+".log")
	deadline := time.Now().Add(timeout)
	for {
		b, _ := os.ReadFile(path)
		if strings.Contains(string(b), s) {
			return
		}
		if time.Now().After(deadline) {
			r.t.Fatalf("worker log %s has no %q within %s:\n%s", path, s, timeout, b)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// waitExit waits for the worker process to be reaped and returns how long
// that took after since.
func (r *rig) waitExit(p *proc, since time.Time, timeout time.Duration) time.Duration {
	r.t.Helper()
	select {
	case <-p.done:
		return time.Since(since)
	case <-time.After(timeout - time.Since(since)):
		r.t.Fatalf("worker did not exit within %s of the signal; logs in %s", timeout, r.logDir)
		return 0
	}
}

// startDrainWorker starts one worker with the given grace (log level info,
// so the drain messages are in its log) and returns its number and process.
func (r *rig) startDrainWorker(concurrency int, grace time.Duration) (int, *proc) {
	r.t.Helper()
	n := r.startWorkerWith(concurrency, "--shutdown-grace", grace.String(), "--log-level", "info")
	return n, r.proc(n)
}

// checkNoClaimsAfter fails when a handler started later than sigAt +
// claimSlack.
func (r *rig) checkNoClaimsAfter(sigAt time.Time) {
	r.t.Helper()
	if late := r.ledger.startedAfter(sigAt.Add(claimSlack)); len(late) > 0 {
		r.t.Errorf("%d handlers started more than %s after SIGTERM (first: job %s at +%s): the worker claimed after the signal",
			len(late), claimSlack, late[0].JobID, late[0].At.Sub(sigAt).Round(time.Millisecond))
	}
}

// checkCompleted: each job was completed exactly once (archive, one COMPLETE
// audit row, one execution in the ledger that ran to the end) and consumed
// no retry.
func (r *rig) checkCompleted(ctx context.Context, ids []string) {
	r.t.Helper()
	st := r.jobRows(ctx, ids)
	completes := r.auditCounts(ctx, "COMPLETE", ids)
	started, finished := r.ledger.byJob(), r.ledger.finishedByJob()
	for _, id := range ids {
		j, ok := st[id]
		switch {
		case !ok:
			r.t.Errorf("job %s lost", id)
		case !j.Archived || j.Status != "completed":
			r.t.Errorf("job %s is %s (archived %v), want completed", id, j.Status, j.Archived)
		case j.RetryCount != 0:
			r.t.Errorf("completed job %s has retry_count %d, want 0", id, j.RetryCount)
		}
		if completes[id] != 1 {
			r.t.Errorf("job %s has %d COMPLETE audit rows, want 1", id, completes[id])
		}
		if len(started[id]) != 1 || len(finished[id]) != 1 {
			r.t.Errorf("job %s: ledger has %d executions, %d run to the end; want exactly 1 of each", id, len(started[id]), len(finished[id]))
		}
	}
}

// checkHandedBack: each job is pending again with no attempt consumed
// (retry_count and reschedule_count 0, no error recorded), released once by
// the worker, never completed; wantExecs is how often the ledger saw it.
func (r *rig) checkHandedBack(ctx context.Context, ids []string, wantExecs int, wantReleased bool) {
	r.t.Helper()
	st := r.jobRows(ctx, ids)
	releases := r.auditCounts(ctx, "RELEASE", ids)
	completes := r.auditCounts(ctx, "COMPLETE", ids)
	started, finished := r.ledger.byJob(), r.ledger.finishedByJob()
	for _, id := range ids {
		j, ok := st[id]
		switch {
		case !ok:
			r.t.Errorf("job %s lost", id)
			continue
		case j.Archived || j.Status != "pending":
			r.t.Errorf("job %s is %s (archived %v), want pending", id, j.Status, j.Archived)
		case j.WorkerID != nil:
			r.t.Errorf("pending job %s still names worker %s", id, *j.WorkerID)
		}
		if j.RetryCount != 0 || j.RescheduleCount != 0 || j.Errors != 0 {
			r.t.Errorf("job %s consumed an attempt: retry_count %d, reschedule_count %d, %d errors recorded",
				id, j.RetryCount, j.RescheduleCount, j.Errors)
		}
		if want := map[bool]int{true: 1, false: 0}[wantReleased]; releases[id] != want {
			r.t.Errorf("job %s has %d RELEASE audit rows, want %d", id, releases[id], want)
		}
		if completes[id] != 0 || len(finished[id]) != 0 {
			r.t.Errorf("handed-back job %s has %d COMPLETE audit rows and %d finished executions, want none", id, completes[id], len(finished[id]))
		}
		if len(started[id]) != wantExecs {
			r.t.Errorf("job %s: ledger has %d executions, want %d", id, len(started[id]), wantExecs)
		}
	}
}

func (r *rig) countProcessing(ctx context.Context) int {
	r.t.Helper()
	var n int
	if err := r.pool.QueryRow(ctx, `SELECT count(*) FROM public.job_queue WHERE status = 'processing'`).Scan(&n); err != nil {
		r.t.Fatal(err)
	}
	return n
}

func checkExitOK(t *testing.T, p *proc) {
	t.Helper()
	if code := p.cmd.ProcessState.ExitCode(); code != 0 {
		t.Errorf("worker exited with %s, want exit code 0", p.cmd.ProcessState)
	}
}

// TestWorkerSIGTERMDrain: SIGTERM while every slot runs a job shorter than
// the grace; more jobs are waiting. The running jobs complete, the waiting
// ones are never claimed, the process exits 0.
func TestWorkerSIGTERMDrain(t *testing.T) {
	const (
		concurrency = 4
		hold        = 2 * time.Second
		grace       = 10 * time.Second
	)
	ctx := context.Background()
	r := newRig(t, testdb.NewURL(t), 0)
	ids := r.enqueueHeld(2*concurrency, hold)
	n, p := r.startDrainWorker(concurrency, grace)
	r.waitStarted(concurrency, 30*time.Second)
	started := r.ledger.byJob()

	sigAt := time.Now()
	if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	took := r.waitExit(p, sigAt, grace+exitSlack)
	checkExitOK(t, p)
	r.waitLog(n, "worker stopped", time.Second)

	var running, waiting []string
	for _, id := range ids {
		if _, ok := started[id]; ok {
			running = append(running, id)
		} else {
			waiting = append(waiting, id)
		}
	}
	if len(running) != concurrency {
		t.Fatalf("%d jobs were running at SIGTERM, want %d", len(running), concurrency)
	}
	r.checkCompleted(ctx, running)
	r.checkHandedBack(ctx, waiting, 0, false)
	r.checkNoClaimsAfter(sigAt)
	if n := r.countProcessing(ctx); n != 0 {
		t.Errorf("%d jobs left processing after a graceful exit", n)
	}
	t.Logf("SIGTERM with %d jobs running (%s each, grace %s): exited 0 after %s; %d completed, %d never claimed",
		len(running), hold, grace, took.Round(time.Millisecond), len(running), len(waiting))
}

// TestWorkerSIGTERMGraceShorterThanHandler: SIGTERM with short and long
// jobs running; the short ones finish within the grace, the long ones are
// cancelled when it ends and handed back without consuming an attempt.
func TestWorkerSIGTERMGraceShorterThanHandler(t *testing.T) {
	const (
		short = 1500 * time.Millisecond
		long  = 5 * time.Minute
		grace = 3 * time.Second
	)
	ctx := context.Background()
	r := newRig(t, testdb.NewURL(t), 0)
	shortIDs := r.enqueueHeld(2, short)
	longIDs := r.enqueueHeld(2, long)
	_, p := r.startDrainWorker(4, grace)
	r.waitStarted(4, 30*time.Second)

	sigAt := time.Now()
	if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	took := r.waitExit(p, sigAt, grace+exitSlack)
	checkExitOK(t, p)
	if took < grace {
		t.Errorf("worker exited %s after SIGTERM, before its %s grace was over", took.Round(time.Millisecond), grace)
	}
	r.checkCompleted(ctx, shortIDs)
	r.checkHandedBack(ctx, longIDs, 1, true)
	r.checkNoClaimsAfter(sigAt)
	if n := r.countProcessing(ctx); n != 0 {
		t.Errorf("%d jobs left processing after a graceful exit", n)
	}
	t.Logf("SIGTERM, grace %s: exited 0 after %s; %d short jobs completed, %d long ones handed back",
		grace, took.Round(time.Millisecond), len(shortIDs), len(longIDs))
}

// TestWorkerSecondSignal: a second signal during the drain ends the process
// at once (the default action of the signal: signal.go restores it after
// the first one). The in-flight jobs stay processing under the dead
// worker's lease until reclaim takes them back.
func TestWorkerSecondSignal(t *testing.T) {
	for _, sig := range []syscall.Signal{syscall.SIGTERM, syscall.SIGINT} {
		t.Run(sig.String(), func(t *testing.T) {
			const (
				concurrency = 2
				grace       = 5 * time.Minute
			)
			ctx := context.Background()
			r := newRig(t, testdb.NewURL(t), 0)
			ids := r.enqueueHeld(concurrency, 5*time.Minute)
			n, p := r.startDrainWorker(concurrency, grace)
			r.waitStarted(concurrency, 30*time.Second)

			if err := p.cmd.Process.Signal(sig); err != nil {
				t.Fatal(err)
			}
			// The drain has begun (and the default handler is back) once
			// the worker logs it.
			r.waitLog(n, "stop requested", 10*time.Second)
			secondAt := time.Now()
			if err := p.cmd.Process.Signal(sig); err != nil {
				t.Fatal(err)
			}
			took := r.waitExit(p, secondAt, exitSlack)
			ws, ok := p.cmd.ProcessState.Sys().(syscall.WaitStatus)
			if !ok || !ws.Signaled() || ws.Signal() != sig {
				t.Errorf("after a second %s the worker ended with %s, want killed by %s", sig, p.cmd.ProcessState, sig)
			}
			b, _ := os.ReadFile(filepath.Join(r.logDir, workerName(n)+".log"))
			if strings.Contains(string(b), "worker stopped") {
				t.Errorf("worker finished its drain instead of exiting at once:\n%s", b)
			}

			st := r.jobRows(ctx, ids)
			for _, id := range ids {
				j := st[id]
				if j.Archived || j.Status != "processing" || j.WorkerID == nil || *j.WorkerID != workerName(n) || j.RetryCount != 0 {
					t.Errorf("job %s after the hard exit: %+v, want processing under %s with retry_count 0", id, j, workerName(n))
				}
			}
			if rel := r.auditCounts(ctx, "RELEASE", ids); len(rel) != 0 {
				t.Errorf("jobs released despite the hard exit: %v", rel)
			}

			// Reclaim recovers them once the lease has expired (aged here
			// rather than waited for); that counts the lost attempt.
			if _, err := r.pool.Exec(ctx, `UPDATE public.job_queue SET heartbeat_at = now() - interval '1 hour' WHERE id = ANY ($1::uuid[])`, ids); err != nil {
				t.Fatal(err)
			}
			res, err := queue.Reclaim(ctx, r.pool, 1000)
			if err != nil {
				t.Fatal(err)
			}
			if res.Reclaimed != len(ids) {
				t.Errorf("reclaim took back %d jobs, want %d", res.Reclaimed, len(ids))
			}
			for id, j := range r.jobRows(ctx, ids) {
				if j.Status != "pending" || j.RetryCount != 1 {
					t.Errorf("job %s after reclaim: %s, retry_count %d; want pending, 1", id, j.Status, j.RetryCount)
				}
			}
			t.Logf("second %s: worker killed by the signal after %s; %d jobs left processing, then reclaimed",
				sig, took.Round(time.Millisecond), len(ids))
		})
	}
}
