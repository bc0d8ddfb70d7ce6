package worker

import (
	"context"
	"encoding/json"
	"time"

	"github.com/v3ctl/v3ctl/internal/db"
	"github.com/v3ctl/v3ctl/internal/handlers"
	"github.com/v3ctl/v3ctl/internal/queue"
)

// The worker talks to the queue only through internal/queue, which wraps
// the SQL functions of migration 00002 (all state changes are fenced by the
// lease token).

// Lease identifies a held job.
type Lease = queue.Lease

// FailResult is fail_job's answer.
type FailResult = queue.FailResult

type claimedJob struct {
	Job   handlers.Job
	Lease Lease
}

func deref(s *string) string {
	if s == nil {
		return ""
	}
	return *s
}

func claimJobs(ctx context.Context, q db.DB, workerID string, types, lanes []string, limit int) ([]claimedJob, error) {
	js, err := queue.Claim(ctx, q, workerID, types, lanes, limit)
	if err != nil {
		return nil, err
	}
	out := make([]claimedJob, len(js))
	for i, j := range js {
		out[i] = claimedJob{
			Job: handlers.Job{ID: j.ID, Type: j.JobType, Lane: deref(j.Lane), Name: j.Name, Attempt: j.Attempt,
				MaxRetries: j.MaxRetries, CorrelationID: deref(j.CorrelationID), PatientID: deref(j.PatientID),
				ShellFileID: deref(j.ShellFileID), Payload: j.Payload, LeaseToken: j.LeaseToken},
			Lease: j.Lease(),
		}
	}
	return out, nil
}

func heartbeatJobs(ctx context.Context, q db.DB, workerID string, leases []Lease) ([]string, error) {
	return queue.Heartbeat(ctx, q, workerID, leases)
}

func failJob(ctx context.Context, q db.DB, l Lease, msg string, retryable bool) (FailResult, error) {
	return queue.Fail(ctx, q, l, msg, retryable)
}

// Rate-limit delays are kept between a second (a "retry now" answer would
// otherwise bounce the job straight back until its reschedules run out) and
// the week reschedule_job accepts.
const (
	minRescheduleDelay = time.Second
	maxRescheduleDelay = 7 * 24 * time.Hour
)

func rescheduleJob(ctx context.Context, q db.DB, l Lease, after time.Duration, reason string) (bool, error) {
	return queue.Reschedule(ctx, q, l, min(max(after, minRescheduleDelay), maxRescheduleDelay), reason)
}

func releaseJob(ctx context.Context, q db.DB, l Lease) (bool, error) {
	return queue.Release(ctx, q, l)
}

func reclaimJobs(ctx context.Context, q db.DB) (int, error) {
	r, err := queue.Reclaim(ctx, q, 1000)
	return r.Reclaimed + r.DeadLettered, err
}

// completeTx completes the job and, for AI handlers, records the tokens for
// metering in the same transaction: either both happen or neither. A
// retry after a lost connection is safe: complete_job is fenced by the
// lease token, so a second call after a commit we never heard of returns
// false and records nothing.
func (w *Worker) completeTx(ctx context.Context, t *task, res handlers.Result, dur time.Duration) (bool, error) {
	tx, err := w.pool.Begin(ctx)
	if err != nil {
		return false, err
	}
	defer tx.Rollback(context.WithoutCancel(ctx)) //nolint:errcheck
	ok, err := queue.Complete(ctx, tx, t.lease, res.Output)
	if err != nil || !ok {
		return ok, err
	}
	if u := res.Usage; u != nil && u.TotalTokens > 0 && w.hasUsageFunc {
		profile := t.job.PatientID
		if profile == "" {
			profile = payloadString(t.job.Payload, "patient_id")
		}
		if profile != "" {
			secs := int((dur + time.Second - 1) / time.Second)
			if _, err := tx.Exec(ctx, `SAVEPOINT usage`); err != nil {
				return false, err
			}
			_, uerr := tx.Exec(ctx, `SELECT public.track_ai_processing_usage($1::uuid, $2::uuid, $3, $4)`,
				profile, t.job.ID, u.TotalTokens, secs)
			if uerr != nil {
				if Transient(uerr) {
					return false, uerr
				}
				// The metering call refused (e.g. a bad profile id): keep the
				// job's result, say so loudly.
				w.m.DBErrors.WithLabelValues("track_usage").Inc()
				t.log.Error("usage not recorded for this job", "error", db.Explain(uerr).Error())
				if _, err := tx.Exec(ctx, `ROLLBACK TO SAVEPOINT usage`); err != nil {
					return false, err
				}
			}
		}
	}
	return true, tx.Commit(ctx)
}

func payloadString(p json.RawMessage, key string) string {
	var m map[string]any
	if json.Unmarshal(p, &m) != nil {
		return ""
	}
	s, _ := m[key].(string)
	return s
}
