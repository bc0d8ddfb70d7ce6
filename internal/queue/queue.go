// Package queue wraps the job queue's SQL API (migrations/00002_job_queue.sql)
// with typed Go values. The semantics (validation, fencing, backoff, dead
// letters, audit rows) live in the SQL functions; this package only calls
// them. IDs are strings (UUID text). See docs/queue.md.
package queue

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/v3ctl/v3ctl/internal/db"
)

// Job types, lanes, categories and statuses known to the schema.
var (
	JobTypes = []string{"shell_file_processing", "ai_processing", "audit_cleanup", "notification_delivery",
		"report_generation", "backup_operation", "system_maintenance", "semantic_processing",
		"consent_verification", "provider_verification", "data_migration"}
	// Lanes maps the job types that have lanes to their lanes; other types are lane-less.
	Lanes = map[string][]string{
		"shell_file_processing": {"fast_queue", "standard_queue"},
		"ai_processing":         {"ai_queue_simple", "ai_queue_complex"},
	}
	AllLanes   = []string{"fast_queue", "standard_queue", "ai_queue_simple", "ai_queue_complex"}
	Categories = []string{"critical", "high_priority", "standard", "background", "maintenance"}
	Statuses   = []string{StatusPending, StatusProcessing, StatusCompleted, StatusFailed, StatusCancelled, StatusDeadLetter}
)

// Status values.
const (
	StatusPending    = "pending"
	StatusProcessing = "processing"
	StatusCompleted  = "completed"
	StatusFailed     = "failed" // legacy; the v3 functions never produce it
	StatusCancelled  = "cancelled"
	StatusDeadLetter = "dead_letter"
)

// EnqueueParams are the arguments of enqueue_job_v3. Zero values take the
// SQL defaults (category standard, priority 5, now, max_retries 3).
type EnqueueParams struct {
	JobType        string
	JobName        string
	Payload        json.RawMessage
	Category       string
	Priority       int
	ScheduledAt    *time.Time
	Lane           string
	IdempotencyKey string
	CorrelationID  string
	MaxRetries     *int
	PatientID      string
	ShellFileID    string
}

// Enqueued is the outcome of Enqueue. With an idempotency key it may be an
// existing unfinished job.
type Enqueued struct {
	JobID       string    `json:"job_id" yaml:"job_id"`
	ScheduledAt time.Time `json:"scheduled_at" yaml:"scheduled_at"`
}

func nz(s string) any {
	if s == "" {
		return nil
	}
	return s
}

// Enqueue adds a job through enqueue_job_v3.
func Enqueue(ctx context.Context, q db.DB, p EnqueueParams) (Enqueued, error) {
	var out Enqueued
	cat := p.Category
	if cat == "" {
		cat = "standard"
	}
	prio := p.Priority
	if prio == 0 {
		prio = 5
	}
	var payload any
	if p.Payload != nil {
		payload = string(p.Payload)
	}
	var maxRetries any
	if p.MaxRetries != nil {
		maxRetries = *p.MaxRetries
	}
	var at any
	if p.ScheduledAt != nil {
		at = *p.ScheduledAt
	}
	err := q.QueryRow(ctx, `SELECT job_id::text, scheduled_at FROM public.enqueue_job_v3(
		$1, $2, $3::jsonb, $4, $5, $6::timestamptz, p_job_lane => $7, p_idempotency_key => $8,
		p_correlation_id => $9, p_max_retries => coalesce($10::int, 3), p_patient_id => $11::uuid,
		p_shell_file_id => $12::uuid)`,
		p.JobType, p.JobName, payload, cat, prio, at, nz(p.Lane), nz(p.IdempotencyKey),
		nz(p.CorrelationID), maxRetries, nz(p.PatientID), nz(p.ShellFileID)).Scan(&out.JobID, &out.ScheduledAt)
	if err != nil {
		return out, db.Explain(err)
	}
	return out, nil
}

// Lease identifies a held job: fencing for complete/fail/heartbeat/
// reschedule/release. An empty Token skips the token check (legacy callers).
type Lease struct {
	JobID    string `json:"job_id" yaml:"job_id"`
	WorkerID string `json:"worker_id" yaml:"worker_id"`
	Token    string `json:"-" yaml:"-"`
}

// Job is a claimed job: what a worker needs to run it.
type Job struct {
	ID            string          `json:"id" yaml:"id"`
	JobType       string          `json:"job_type" yaml:"job_type"`
	Lane          *string         `json:"job_lane" yaml:"job_lane"`
	Name          string          `json:"job_name" yaml:"job_name"`
	Payload       json.RawMessage `json:"-" yaml:"-"`
	Category      string          `json:"job_category" yaml:"job_category"`
	Priority      int             `json:"priority" yaml:"priority"`
	Attempt       int             `json:"attempt" yaml:"attempt"`
	RetryCount    int             `json:"retry_count" yaml:"retry_count"`
	MaxRetries    int             `json:"max_retries" yaml:"max_retries"`
	LeaseToken    string          `json:"-" yaml:"-"`
	CorrelationID *string         `json:"correlation_id" yaml:"correlation_id"`
	PatientID     *string         `json:"patient_id" yaml:"patient_id"`
	ShellFileID   *string         `json:"shell_file_id" yaml:"shell_file_id"`
	ScheduledAt   time.Time       `json:"scheduled_at" yaml:"scheduled_at"`
	StartedAt     time.Time       `json:"started_at" yaml:"started_at"`
	CreatedAt     time.Time       `json:"created_at" yaml:"created_at"`
	WorkerID      string          `json:"worker_id" yaml:"worker_id"`
}

// Lease is the fencing handle of the claimed job.
func (j Job) Lease() Lease { return Lease{JobID: j.ID, WorkerID: j.WorkerID, Token: j.LeaseToken} }

// IsLastAttempt reports whether a retryable failure of this attempt would
// dead-letter the job.
func (j Job) IsLastAttempt() bool { return j.Attempt > j.MaxRetries }

// Claim claims up to limit due pending jobs (most urgent first) through
// claim_jobs_v3. Empty types/lanes mean any. It returns no jobs while
// system.maintenance_mode is on.
func Claim(ctx context.Context, q db.DB, workerID string, types, lanes []string, limit int) ([]Job, error) {
	if limit <= 0 {
		limit = 1
	}
	var ta, la any
	if len(types) > 0 {
		ta = types
	}
	if len(lanes) > 0 {
		la = lanes
	}
	rows, err := q.Query(ctx, `SELECT id::text, job_type, job_lane, job_name, job_payload, job_category, priority,
		attempt, retry_count, max_retries, lease_token::text, correlation_id, patient_id::text, shell_file_id::text,
		scheduled_at, started_at, created_at
		FROM public.claim_jobs_v3($1, $2::text[], $3::text[], $4)`, workerID, ta, la, limit)
	if err != nil {
		return nil, db.Explain(err)
	}
	defer rows.Close()
	var out []Job
	for rows.Next() {
		var j Job
		var payload []byte
		if err := rows.Scan(&j.ID, &j.JobType, &j.Lane, &j.Name, &payload, &j.Category, &j.Priority,
			&j.Attempt, &j.RetryCount, &j.MaxRetries, &j.LeaseToken, &j.CorrelationID, &j.PatientID, &j.ShellFileID,
			&j.ScheduledAt, &j.StartedAt, &j.CreatedAt); err != nil {
			return nil, err
		}
		j.Payload = payload
		j.WorkerID = workerID
		out = append(out, j)
	}
	if err := rows.Err(); err != nil {
		return nil, db.Explain(err)
	}
	return out, nil
}

func tok(s string) any {
	if s == "" {
		return nil
	}
	return s
}

// Heartbeat renews the leases of a worker's in-flight jobs in one statement
// (heartbeat_jobs_v3) and returns the ids whose lease is lost. The leases'
// WorkerID must equal workerID.
func Heartbeat(ctx context.Context, q db.DB, workerID string, leases []Lease) ([]string, error) {
	if len(leases) == 0 {
		return nil, nil
	}
	ids := make([]string, len(leases))
	toks := make([]any, len(leases))
	for i, l := range leases {
		if l.WorkerID != "" && l.WorkerID != workerID {
			return nil, fmt.Errorf("heartbeat: lease of job %s belongs to worker %q, not %q", l.JobID, l.WorkerID, workerID)
		}
		ids[i] = l.JobID
		toks[i] = tok(l.Token)
	}
	rows, err := q.Query(ctx, `SELECT j::text FROM public.heartbeat_jobs_v3($1, $2::uuid[], $3::uuid[]) AS j`, workerID, ids, toks)
	if err != nil {
		return nil, db.Explain(err)
	}
	lost, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return nil, db.Explain(err)
	}
	return lost, nil
}

// HeartbeatOne renews one lease (update_job_heartbeat); false when lost.
func HeartbeatOne(ctx context.Context, q db.DB, l Lease) (bool, error) {
	var ok bool
	err := q.QueryRow(ctx, `SELECT public.update_job_heartbeat($1::uuid, $2, $3::uuid)`, l.JobID, l.WorkerID, tok(l.Token)).Scan(&ok)
	return ok, db.Explain(err)
}

// Complete finishes a held job (complete_job); false for a stale holder.
func Complete(ctx context.Context, q db.DB, l Lease, result json.RawMessage) (bool, error) {
	var res any
	if result != nil {
		res = string(result)
	}
	var ok bool
	err := q.QueryRow(ctx, `SELECT public.complete_job($1::uuid, $2, $3::jsonb, $4::uuid)`, l.JobID, l.WorkerID, res, tok(l.Token)).Scan(&ok)
	return ok, db.Explain(err)
}

// FailResult is fail_job's answer. OK false: the lease was lost, nothing changed.
type FailResult struct {
	OK            bool       `json:"ok" yaml:"ok"`
	Status        string     `json:"status,omitempty" yaml:"status,omitempty"`
	NextAttemptAt *time.Time `json:"next_attempt_at,omitempty" yaml:"next_attempt_at,omitempty"`
	Attempt       int        `json:"attempt,omitempty" yaml:"attempt,omitempty"`
	RetryCount    int        `json:"retry_count,omitempty" yaml:"retry_count,omitempty"`
}

// Fail reports a failed attempt (fail_job): retryable failures go back to
// pending with backoff until max_retries, then to dead letter; permanent
// failures go to dead letter at once. msg must not carry protected data.
func Fail(ctx context.Context, q db.DB, l Lease, msg string, retryable bool) (FailResult, error) {
	var raw []byte
	var r FailResult
	if err := q.QueryRow(ctx, `SELECT public.fail_job($1::uuid, $2, $3, $4, $5::uuid)`, l.JobID, l.WorkerID, CleanText(msg), retryable, tok(l.Token)).Scan(&raw); err != nil {
		return r, db.Explain(err)
	}
	if err := json.Unmarshal(raw, &r); err != nil {
		return r, fmt.Errorf("fail_job answer: %w", err)
	}
	return r, nil
}

// Reschedule hands a held job back after delay without consuming an attempt
// (reschedule_job, with jitter). true: done (beyond queue.max_reschedules the
// job went to dead letter instead); false: the lease was lost.
// A zero delay means "now"; a negative one means the default
// queue.backpressure_delay_seconds.
func Reschedule(ctx context.Context, q db.DB, l Lease, delay time.Duration, reason string) (bool, error) {
	var d any
	if delay >= 0 {
		d = int(math.Ceil(delay.Seconds()))
	}
	var ok bool
	err := q.QueryRow(ctx, `SELECT public.reschedule_job($1::uuid, $2::int, $3, true, $4, $5::uuid)`,
		l.JobID, d, nz(CleanText(reason)), nz(l.WorkerID), tok(l.Token)).Scan(&ok)
	return ok, db.Explain(err)
}

// Release hands a held job back now, no attempt consumed (release_job).
func Release(ctx context.Context, q db.DB, l Lease) (bool, error) {
	var ok bool
	err := q.QueryRow(ctx, `SELECT public.release_job($1::uuid, $2, $3::uuid)`, l.JobID, l.WorkerID, tok(l.Token)).Scan(&ok)
	return ok, db.Explain(err)
}

// ReclaimResult is reclaim_timed_out_jobs' answer.
type ReclaimResult struct {
	Reclaimed      int      `json:"reclaimed" yaml:"reclaimed"`
	DeadLettered   int      `json:"dead_lettered" yaml:"dead_lettered"`
	TimeoutSeconds int      `json:"timeout_seconds" yaml:"timeout_seconds"`
	JobIDs         []string `json:"job_ids" yaml:"job_ids"`
}

// Reclaim returns timed-out processing jobs to pending (or dead letter).
// Safe to call concurrently from cron, v3ctl and workers.
func Reclaim(ctx context.Context, q db.DB, limit int) (ReclaimResult, error) {
	if limit <= 0 {
		limit = 1000
	}
	var raw []byte
	var r ReclaimResult
	if err := q.QueryRow(ctx, `SELECT public.reclaim_timed_out_jobs($1)`, limit).Scan(&raw); err != nil {
		return r, db.Explain(err)
	}
	if err := json.Unmarshal(raw, &r); err != nil {
		return r, fmt.Errorf("reclaim answer: %w", err)
	}
	if r.JobIDs == nil {
		r.JobIDs = []string{}
	}
	return r, nil
}

// Cancel cancels an unfinished job (cancel_job); false when it is unknown or
// already finished.
func Cancel(ctx context.Context, q db.DB, jobID, reason, actor string) (bool, error) {
	var ok bool
	err := q.QueryRow(ctx, `SELECT public.cancel_job($1::uuid, $2, $3)`, jobID, nz(reason), nz(actor)).Scan(&ok)
	return ok, db.Explain(err)
}

// RequeueFilter selects dead letters to requeue. All empty: every dead letter.
type RequeueFilter struct {
	JobIDs  []string
	JobType string
	Lane    string
	Since   *time.Time
	Limit   int
}

// Requeue brings dead letters back to pending with fresh attempts and
// returns their ids.
func Requeue(ctx context.Context, q db.DB, f RequeueFilter, actor, reason string) ([]string, error) {
	var ids any
	if len(f.JobIDs) > 0 {
		ids = f.JobIDs
	}
	var since any
	if f.Since != nil {
		since = *f.Since
	}
	limit := f.Limit
	if limit <= 0 {
		limit = 1000
	}
	rows, err := q.Query(ctx, `SELECT j::text FROM public.requeue_dead_letter_jobs($1::uuid[], $2, $3, $4::timestamptz, $5, $6, $7) AS j`,
		ids, nz(f.JobType), nz(f.Lane), since, limit, nz(actor), nz(reason))
	if err != nil {
		return nil, db.Explain(err)
	}
	out, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return nil, db.Explain(err)
	}
	if out == nil {
		out = []string{}
	}
	return out, nil
}

// PurgeResult is purge_finished_jobs' answer (summed over batches).
type PurgeResult struct {
	Purged   int            `json:"purged" yaml:"purged"`
	ByStatus map[string]int `json:"by_status" yaml:"by_status"`
	Cutoff   time.Time      `json:"cutoff" yaml:"cutoff"`
}

// Purge deletes archived jobs that finished more than olderThan ago, in
// batches of batch rows (one transaction each) until none is left.
// statuses defaults to completed and cancelled.
func Purge(ctx context.Context, q db.DB, olderThan time.Duration, statuses []string, batch int, actor string) (PurgeResult, error) {
	res := PurgeResult{ByStatus: map[string]int{}}
	if batch <= 0 {
		batch = 10000
	}
	var st any
	if len(statuses) > 0 {
		st = statuses
	}
	for {
		var raw []byte
		err := q.QueryRow(ctx, `SELECT public.purge_finished_jobs(make_interval(secs => $1), coalesce($2::text[], ARRAY['completed','cancelled']), $3, $4)`,
			olderThan.Seconds(), st, batch, nz(actor)).Scan(&raw)
		if err != nil {
			return res, db.Explain(err)
		}
		var r PurgeResult
		if err := json.Unmarshal(raw, &r); err != nil {
			return res, fmt.Errorf("purge answer: %w", err)
		}
		res.Purged += r.Purged
		res.Cutoff = r.Cutoff
		for k, v := range r.ByStatus {
			res.ByStatus[k] += v
		}
		if r.Purged < batch {
			return res, nil
		}
		if err := ctx.Err(); err != nil {
			return res, err
		}
	}
}

// ErrNotFound: no job with that id (neither unfinished nor archived).
var ErrNotFound = errors.New("job not found")

// Completion is one job to complete with CompleteMany.
type Completion struct {
	Lease  Lease
	Result json.RawMessage
}

// Batcher sends a pipelined batch; *pgxpool.Pool, *pgxpool.Conn and *pgx.Conn
// satisfy it.
type Batcher interface {
	SendBatch(ctx context.Context, b *pgx.Batch) pgx.BatchResults
}

// CompleteMany completes several jobs in one round trip and one implicit
// transaction, so they commit together (one WAL flush) or not at all: one
// set-based complete_jobs_v3 call per worker id when every lease has a token,
// else pipelined complete_job calls. ok[i] tells whether cs[i] was completed
// (false: that lease was lost). On error nothing was committed unless the
// connection failed after the commit; a retry is safe either way because
// completion is fenced by the lease token.
func CompleteMany(ctx context.Context, q Batcher, cs []Completion) (ok []bool, err error) {
	if len(cs) > 1 && len(cs) <= 1000 && allTokens(cs) {
		return completeSet(ctx, q, cs)
	}
	return CompletePipelined(ctx, q, cs)
}

// CompletePipelined is CompleteMany with one complete_job call per job,
// pipelined in one implicit transaction: for schemas without
// complete_jobs_v3 and for leases without a token.
func CompletePipelined(ctx context.Context, q Batcher, cs []Completion) (ok []bool, err error) {
	b := &pgx.Batch{}
	for _, c := range cs {
		var res any
		if c.Result != nil {
			res = string(c.Result)
		}
		b.Queue(`SELECT public.complete_job($1::uuid, $2, $3::jsonb, $4::uuid)`, c.Lease.JobID, c.Lease.WorkerID, res, tok(c.Lease.Token))
	}
	br := q.SendBatch(ctx, b)
	defer func() {
		if cerr := br.Close(); err == nil && cerr != nil {
			err = db.Explain(cerr)
			ok = nil
		}
	}()
	ok = make([]bool, len(cs))
	for i := range cs {
		if err := br.QueryRow().Scan(&ok[i]); err != nil {
			return nil, db.Explain(err)
		}
	}
	return ok, nil
}

// CleanText makes an error text storable in a PostgreSQL text column: NUL
// bytes are dropped and invalid UTF-8 (a handler's binary stderr, a cut
// multi-byte character) becomes U+FFFD. Without this the database refuses
// the failure report and the job would wait for reclaim instead.
func CleanText(s string) string {
	if strings.IndexByte(s, 0) >= 0 {
		s = strings.ReplaceAll(s, "\x00", "")
	}
	return strings.ToValidUTF8(s, "\uFFFD")
}

func allTokens(cs []Completion) bool {
	for _, c := range cs {
		if c.Lease.Token == "" {
			return false
		}
	}
	return true
}

// completeSet completes jobs of one worker with one complete_jobs_v3 call
// per worker id (set-based: one archive insert and one audit insert for all
// of them), in one implicit transaction.
func completeSet(ctx context.Context, q Batcher, cs []Completion) ([]bool, error) {
	type group struct {
		idx            []int
		ids, toks, res []any
	}
	var order []string
	groups := map[string]*group{}
	for i, c := range cs {
		g := groups[c.Lease.WorkerID]
		if g == nil {
			g = &group{}
			groups[c.Lease.WorkerID] = g
			order = append(order, c.Lease.WorkerID)
		}
		var res any
		if c.Result != nil {
			res = string(c.Result)
		}
		g.idx = append(g.idx, i)
		g.ids = append(g.ids, c.Lease.JobID)
		g.toks = append(g.toks, c.Lease.Token)
		g.res = append(g.res, res)
	}
	b := &pgx.Batch{}
	for _, w := range order {
		g := groups[w]
		b.Queue(`SELECT pg_catalog.array_agg(x)::text[] FROM public.complete_jobs_v3($1, $2::uuid[], $3::uuid[], $4::jsonb[]) x`,
			w, g.ids, g.toks, g.res)
	}
	br := q.SendBatch(ctx, b)
	ok := make([]bool, len(cs))
	for _, w := range order {
		var done []string
		if err := br.QueryRow().Scan(&done); err != nil {
			br.Close()
			return nil, db.Explain(err)
		}
		set := make(map[string]bool, len(done))
		for _, id := range done {
			set[id] = true
		}
		for _, i := range groups[w].idx {
			ok[i] = set[cs[i].Lease.JobID]
		}
	}
	if err := br.Close(); err != nil {
		return nil, db.Explain(err)
	}
	return ok, nil
}
