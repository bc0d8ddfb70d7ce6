package queue

import (
	"context"
	"encoding/json"
	"errors"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/v3ctl/v3ctl/internal/db"
)

// Read-only views for operators (v3ctl jobs list/show/stats). They never
// return payloads unless asked for one job explicitly.

// Summary is one job in a listing (no payload, no token).
type Summary struct {
	ID            string     `json:"id" yaml:"id"`
	JobType       string     `json:"job_type" yaml:"job_type"`
	Lane          *string    `json:"job_lane" yaml:"job_lane"`
	Name          string     `json:"job_name" yaml:"job_name"`
	Status        string     `json:"status" yaml:"status"`
	Priority      int        `json:"priority" yaml:"priority"`
	RetryCount    int        `json:"retry_count" yaml:"retry_count"`
	MaxRetries    int        `json:"max_retries" yaml:"max_retries"`
	WorkerID      *string    `json:"worker_id" yaml:"worker_id"`
	PatientID     *string    `json:"patient_id" yaml:"patient_id"`
	CorrelationID *string    `json:"correlation_id" yaml:"correlation_id"`
	ScheduledAt   time.Time  `json:"scheduled_at" yaml:"scheduled_at"`
	StartedAt     *time.Time `json:"started_at" yaml:"started_at"`
	CompletedAt   *time.Time `json:"completed_at" yaml:"completed_at"`
	CreatedAt     time.Time  `json:"created_at" yaml:"created_at"`
}

// ListFilter selects jobs for List. Empty fields match everything.
type ListFilter struct {
	Statuses  []string
	JobType   string
	Lane      string
	PatientID string
	Since     *time.Time // created at or after
	Limit     int
}

const summaryCols = `id::text, job_type, job_lane, job_name, status, priority, retry_count, max_retries,
	worker_id, patient_id::text, correlation_id, scheduled_at, started_at, completed_at, created_at`

func scanSummary(row pgx.Row, s *Summary) error {
	return row.Scan(&s.ID, &s.JobType, &s.Lane, &s.Name, &s.Status, &s.Priority, &s.RetryCount, &s.MaxRetries,
		&s.WorkerID, &s.PatientID, &s.CorrelationID, &s.ScheduledAt, &s.StartedAt, &s.CompletedAt, &s.CreatedAt)
}

// List returns jobs (unfinished and archived), newest first.
func List(ctx context.Context, q db.DB, f ListFilter) ([]Summary, error) {
	if f.Limit <= 0 {
		f.Limit = 50
	}
	var st any
	if len(f.Statuses) > 0 {
		st = f.Statuses
	}
	var since any
	if f.Since != nil {
		since = *f.Since
	}
	rows, err := q.Query(ctx, `SELECT `+summaryCols+` FROM public.job_queue_all
		WHERE ($1::text[] IS NULL OR status = ANY ($1))
		  AND ($2::text IS NULL OR job_type = $2)
		  AND ($3::text IS NULL OR job_lane = $3)
		  AND ($4::uuid IS NULL OR patient_id = $4)
		  AND ($5::timestamptz IS NULL OR created_at >= $5)
		ORDER BY created_at DESC, id
		LIMIT $6`, st, nz(f.JobType), nz(f.Lane), nz(f.PatientID), since, f.Limit)
	if err != nil {
		return nil, db.Explain(err)
	}
	defer rows.Close()
	out := []Summary{}
	for rows.Next() {
		var s Summary
		if err := scanSummary(rows, &s); err != nil {
			return nil, err
		}
		out = append(out, s)
	}
	return out, db.Explain(rows.Err())
}

// AuditEntry is one audit row of a job.
type AuditEntry struct {
	At        time.Time       `json:"changed_at" yaml:"changed_at"`
	Operation string          `json:"operation" yaml:"operation"`
	OldValues json.RawMessage `json:"old_values" yaml:"old_values"`
	NewValues json.RawMessage `json:"new_values" yaml:"new_values"`
	ChangedBy *string         `json:"changed_by" yaml:"changed_by"`
	Reason    *string         `json:"reason" yaml:"reason"`
}

// Detail is one job with its error history, timings and audit trail. The
// payload is filled only when asked for.
type Detail struct {
	Summary
	Category        string          `json:"job_category" yaml:"job_category"`
	ShellFileID     *string         `json:"shell_file_id" yaml:"shell_file_id"`
	IdempotencyKey  *string         `json:"idempotency_key" yaml:"idempotency_key"`
	HeartbeatAt     *time.Time      `json:"heartbeat_at" yaml:"heartbeat_at"`
	DeadLetterAt    *time.Time      `json:"dead_letter_at" yaml:"dead_letter_at"`
	UpdatedAt       time.Time       `json:"updated_at" yaml:"updated_at"`
	RescheduleCount int             `json:"reschedule_count" yaml:"reschedule_count"`
	ErrorDetails    json.RawMessage `json:"error_details" yaml:"error_details"`
	ErrorHistory    json.RawMessage `json:"error_history" yaml:"error_history"`
	Result          json.RawMessage `json:"job_result,omitempty" yaml:"job_result,omitempty"`
	Payload         json.RawMessage `json:"job_payload,omitempty" yaml:"job_payload,omitempty"`
	Audit           []AuditEntry    `json:"audit" yaml:"audit"`
}

// Get returns one job; ErrNotFound when no job has that id. The payload and
// result are included only with withPayload.
func Get(ctx context.Context, q db.DB, id string, withPayload bool) (Detail, error) {
	var d Detail
	var payload, result, errDetails, errHist []byte
	row := q.QueryRow(ctx, `SELECT `+summaryCols+`, job_category, shell_file_id::text, idempotency_key, heartbeat_at,
		dead_letter_at, updated_at, reschedule_count, error_details, error_history,
		CASE WHEN $2 THEN job_payload END, CASE WHEN $2 THEN job_result END
		FROM public.job_queue_all WHERE id = $1::uuid`, id, withPayload)
	err := row.Scan(&d.ID, &d.JobType, &d.Lane, &d.Name, &d.Status, &d.Priority, &d.RetryCount, &d.MaxRetries,
		&d.WorkerID, &d.PatientID, &d.CorrelationID, &d.ScheduledAt, &d.StartedAt, &d.CompletedAt, &d.CreatedAt,
		&d.Category, &d.ShellFileID, &d.IdempotencyKey, &d.HeartbeatAt, &d.DeadLetterAt, &d.UpdatedAt,
		&d.RescheduleCount, &errDetails, &errHist, &payload, &result)
	if errors.Is(err, pgx.ErrNoRows) {
		return d, ErrNotFound
	}
	if err != nil {
		return d, db.Explain(err)
	}
	d.Payload, d.Result, d.ErrorDetails, d.ErrorHistory = payload, result, errDetails, errHist
	rows, err := q.Query(ctx, `SELECT changed_at, operation, old_values, new_values, changed_by, reason
		FROM public.audit_log WHERE job_id = $1::uuid ORDER BY changed_at, id`, id)
	if err != nil {
		return d, db.Explain(err)
	}
	defer rows.Close()
	d.Audit = []AuditEntry{}
	for rows.Next() {
		var a AuditEntry
		var o, n []byte
		if err := rows.Scan(&a.At, &a.Operation, &o, &n, &a.ChangedBy, &a.Reason); err != nil {
			return d, err
		}
		a.OldValues, a.NewValues = o, n
		d.Audit = append(d.Audit, a)
	}
	return d, db.Explain(rows.Err())
}

// Count is the number of jobs in one status × type × lane cell.
type Count struct {
	Status  string  `json:"status" yaml:"status"`
	JobType string  `json:"job_type" yaml:"job_type"`
	Lane    *string `json:"job_lane" yaml:"job_lane"`
	Count   int64   `json:"count" yaml:"count"`
}

// Stats is the queue's health at a glance.
type Stats struct {
	At time.Time `json:"at" yaml:"at"`
	// Counts: every unfinished job, and finished jobs within Window.
	Counts        []Count `json:"counts" yaml:"counts"`
	WindowSeconds int64   `json:"finished_window_seconds" yaml:"finished_window_seconds"`
	Pending       int64   `json:"pending" yaml:"pending"`
	Due           int64   `json:"due" yaml:"due"`
	Processing    int64   `json:"processing" yaml:"processing"`
	// OldestDueAgeSeconds: how long the longest-waiting due job has waited (0: none due).
	OldestDueAgeSeconds float64 `json:"oldest_due_age_seconds" yaml:"oldest_due_age_seconds"`
	// Stuck: processing jobs without a heartbeat for worker.timeout_seconds (reclaim will take them).
	Stuck          int64 `json:"stuck" yaml:"stuck"`
	TimeoutSeconds int64 `json:"timeout_seconds" yaml:"timeout_seconds"`
	DeadLetters    int64 `json:"dead_letters" yaml:"dead_letters"`
	// Finished jobs per window: completed and dead-lettered in the last 5 minutes / hour.
	Completed5m     int64   `json:"completed_5m" yaml:"completed_5m"`
	Completed1h     int64   `json:"completed_1h" yaml:"completed_1h"`
	DeadLettered5m  int64   `json:"dead_lettered_5m" yaml:"dead_lettered_5m"`
	DeadLettered1h  int64   `json:"dead_lettered_1h" yaml:"dead_lettered_1h"`
	PerMinute5m     float64 `json:"completed_per_minute_5m" yaml:"completed_per_minute_5m"`
	PerMinute1h     float64 `json:"completed_per_minute_1h" yaml:"completed_per_minute_1h"`
	MaintenanceMode bool    `json:"maintenance_mode" yaml:"maintenance_mode"`
}

// GetStats computes Stats; finished jobs are counted over window (default 24 h).
func GetStats(ctx context.Context, q db.DB, window time.Duration) (Stats, error) {
	var s Stats
	if window <= 0 {
		window = 24 * time.Hour
	}
	s.WindowSeconds = int64(window.Seconds())
	err := q.QueryRow(ctx, `SELECT now(),
		(public.get_system_config('worker.timeout_seconds', '1800'::jsonb) #>> '{}')::bigint,
		public.get_system_config('system.maintenance_mode', 'false'::jsonb) = 'true'::jsonb`).Scan(&s.At, &s.TimeoutSeconds, &s.MaintenanceMode)
	if err != nil {
		return s, db.Explain(err)
	}
	rows, err := q.Query(ctx, `
		SELECT status, job_type, job_lane, count(*) FROM public.job_queue GROUP BY 1, 2, 3
		UNION ALL
		SELECT status, job_type, job_lane, count(*) FROM public.job_queue_archive
		WHERE completed_at >= now() - make_interval(secs => $1) GROUP BY 1, 2, 3
		ORDER BY 1, 2, 3`, window.Seconds())
	if err != nil {
		return s, db.Explain(err)
	}
	s.Counts = []Count{}
	for rows.Next() {
		var c Count
		if err := rows.Scan(&c.Status, &c.JobType, &c.Lane, &c.Count); err != nil {
			rows.Close()
			return s, err
		}
		s.Counts = append(s.Counts, c)
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return s, db.Explain(err)
	}
	err = q.QueryRow(ctx, `SELECT
		count(*) FILTER (WHERE status = 'pending'),
		count(*) FILTER (WHERE status = 'pending' AND scheduled_at <= now()),
		count(*) FILTER (WHERE status = 'processing'),
		coalesce(extract(epoch FROM now() - min(scheduled_at) FILTER (WHERE status = 'pending' AND scheduled_at <= now())), 0)::float8,
		count(*) FILTER (WHERE status = 'processing' AND heartbeat_at < now() - make_interval(secs => $1))
		FROM public.job_queue`, s.TimeoutSeconds).Scan(&s.Pending, &s.Due, &s.Processing, &s.OldestDueAgeSeconds, &s.Stuck)
	if err != nil {
		return s, db.Explain(err)
	}
	err = q.QueryRow(ctx, `SELECT
		(SELECT count(*) FROM public.job_queue_archive WHERE status IN ('dead_letter', 'failed')),
		count(*) FILTER (WHERE status = 'completed' AND completed_at >= now() - interval '5 minutes'),
		count(*) FILTER (WHERE status = 'completed'),
		count(*) FILTER (WHERE status = 'dead_letter' AND completed_at >= now() - interval '5 minutes'),
		count(*) FILTER (WHERE status = 'dead_letter')
		FROM public.job_queue_archive WHERE completed_at >= now() - interval '1 hour'`).
		Scan(&s.DeadLetters, &s.Completed5m, &s.Completed1h, &s.DeadLettered5m, &s.DeadLettered1h)
	if err != nil {
		return s, db.Explain(err)
	}
	s.PerMinute5m = float64(s.Completed5m) / 5
	s.PerMinute1h = float64(s.Completed1h) / 60
	return s, nil
}
