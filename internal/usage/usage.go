// Package usage wraps the usage metering and subscription plan SQL API of
// migration 00004: tracking (track_shell_file_upload_usage,
// track_ai_processing_usage), status (get_user_usage_status), the report,
// the event ledger, rebuild/verify of the aggregates, and plan
// administration. The rules live in the SQL functions; this package turns
// Go values into calls and rows into Go values. No printing, no cobra.
package usage

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/v3ctl/v3ctl/internal/db"
)

// LimitExceededCode is the SQLSTATE of a refusal by enforcement
// (features.billing_enabled): an upload or AI job that would exceed a plan
// limit. The error's DETAIL is "limit=<metric>".
const LimitExceededCode = "V3L01"

// BytesPerMB is the display unit of storage (MiB). Limits and usage are
// stored in exact bytes.
const BytesPerMB = 1048576

// Metrics are the limited metrics, as named in get_user_usage_status, in the
// limit_hit events and in V3L01 errors.
var Metrics = []string{"shell_files", "pages", "ai_tokens", "storage"}

// LimitError is a V3L01 refusal.
type LimitError struct {
	Metric  string // shell_files, pages, ai_tokens or storage
	Message string
	Err     error
}

func (e *LimitError) Error() string { return e.Message }
func (e *LimitError) Unwrap() error { return e.Err }

// AsLimitError reports whether err is a V3L01 refusal and returns it.
func AsLimitError(err error) (*LimitError, bool) {
	var le *LimitError
	if errors.As(err, &le) {
		return le, true
	}
	var pg *pgconn.PgError
	if errors.As(err, &pg) && pg.Code == LimitExceededCode {
		return &LimitError{Metric: strings.TrimPrefix(pg.Detail, "limit="), Message: pg.Message, Err: err}, true
	}
	return nil, false
}

func explain(err error) error {
	if err == nil {
		return nil
	}
	if le, ok := AsLimitError(err); ok {
		return le
	}
	return db.Explain(err)
}

// NotFoundError names something that does not exist.
type NotFoundError struct {
	What, Ref string
	Hint      string
}

func (e *NotFoundError) Error() string {
	s := fmt.Sprintf("%s %q not found", e.What, e.Ref)
	if e.Hint != "" {
		s += "; " + e.Hint
	}
	return s
}

// ---------------------------------------------------------------------------
// Status
// ---------------------------------------------------------------------------

// Metric is one counted metric of a status.
type Metric struct {
	Used       int64    `json:"used" yaml:"used"`
	Limit      *int64   `json:"limit" yaml:"limit"`
	Percentage *float64 `json:"percentage" yaml:"percentage"`
}

// StorageMetric is the storage level of a status, in MB (1 MB = 1,048,576 bytes).
type StorageMetric struct {
	UsedMB     float64  `json:"used_mb" yaml:"used_mb"`
	LimitMB    *float64 `json:"limit_mb" yaml:"limit_mb"`
	Percentage *float64 `json:"percentage" yaml:"percentage"`
}

// Status is the get_user_usage_status document, field for field.
type Status struct {
	CurrentPeriod struct {
		Start string `json:"start" yaml:"start"`
		End   string `json:"end" yaml:"end"`
	} `json:"current_period" yaml:"current_period"`
	Usage struct {
		ShellFiles Metric        `json:"shell_files" yaml:"shell_files"`
		Pages      Metric        `json:"pages" yaml:"pages"`
		AITokens   Metric        `json:"ai_tokens" yaml:"ai_tokens"`
		Storage    StorageMetric `json:"storage" yaml:"storage"`
	} `json:"usage" yaml:"usage"`
	Status struct {
		PlanType        string `json:"plan_type" yaml:"plan_type"`
		OverLimit       bool   `json:"over_limit" yaml:"over_limit"`
		UpgradeRequired bool   `json:"upgrade_required" yaml:"upgrade_required"`
	} `json:"status" yaml:"status"`
}

func scanStatus(row pgx.Row) (Status, error) {
	var raw []byte
	var st Status
	if err := row.Scan(&raw); err != nil {
		return st, explain(err)
	}
	return st, json.Unmarshal(raw, &st)
}

// ProfileStatus calls get_user_usage_status for a profile (account totals of
// the profile's account) for the period containing at (nil: now).
func ProfileStatus(ctx context.Context, q db.DB, profileID string, at *time.Time) (Status, error) {
	return scanStatus(q.QueryRow(ctx, `SELECT public.get_user_usage_status($1::uuid, $2)`, profileID, at))
}

// AccountStatus is the same document for an account (usage_account_status).
func AccountStatus(ctx context.Context, q db.DB, accountID string, at *time.Time) (Status, error) {
	return scanStatus(q.QueryRow(ctx, `SELECT public.usage_account_status($1::uuid, coalesce($2, now()))`, accountID, at))
}

// ---------------------------------------------------------------------------
// Accounts and profiles
// ---------------------------------------------------------------------------

// Profile is one profile of an account (no display names: they are personal data).
type Profile struct {
	ID       string `json:"profile_id" yaml:"profile_id"`
	Type     string `json:"profile_type" yaml:"profile_type"`
	Archived bool   `json:"archived" yaml:"archived"`
}

// Account is a login account with its plan and profiles.
type Account struct {
	ID       string    `json:"account_id" yaml:"account_id"`
	Email    *string   `json:"email" yaml:"email"`
	Plan     string    `json:"plan_type" yaml:"plan_type"`
	Profiles []Profile `json:"profiles" yaml:"profiles"`
	// ProfileID is set when the account was resolved from a profile id.
	ProfileID string `json:"-" yaml:"-"`
}

// Label is the email, else the id.
func (a Account) Label() string {
	if a.Email != nil && *a.Email != "" {
		return *a.Email
	}
	return a.ID
}

func isUUID(s string) bool {
	if len(s) != 36 {
		return false
	}
	for i, r := range s {
		switch i {
		case 8, 13, 18, 23:
			if r != '-' {
				return false
			}
		default:
			if !strings.ContainsRune("0123456789abcdefABCDEF", r) {
				return false
			}
		}
	}
	return true
}

// ResolveAccount finds an account from an email, an account id or a
// profile id (the profile's account owner).
func ResolveAccount(ctx context.Context, q db.DB, ref string) (Account, error) {
	ref = strings.TrimSpace(ref)
	var a Account
	var err error
	switch {
	case strings.Contains(ref, "@"):
		err = q.QueryRow(ctx, `SELECT id::text, email FROM auth.users WHERE lower(email) = lower($1)`, ref).Scan(&a.ID, &a.Email)
	case isUUID(ref):
		err = q.QueryRow(ctx, `SELECT u.id::text, u.email, coalesce(p.id::text, '')
			FROM auth.users u LEFT JOIN public.user_profiles p ON p.id = $1::uuid
			WHERE u.id = $1::uuid OR u.id = p.account_owner_id
			ORDER BY (u.id = $1::uuid) DESC LIMIT 1`, ref).Scan(&a.ID, &a.Email, &a.ProfileID)
	default:
		return a, &NotFoundError{What: "account", Ref: ref, Hint: "give an account email, an account id or a profile id"}
	}
	if errors.Is(err, pgx.ErrNoRows) {
		return a, &NotFoundError{What: "account or profile", Ref: ref, Hint: "give an account email, an account id or a profile id"}
	}
	if err != nil {
		return a, explain(err)
	}
	if err := q.QueryRow(ctx, `SELECT (public.usage_account_plan($1::uuid)).plan_key`, a.ID).Scan(&a.Plan); err != nil {
		return a, explain(err)
	}
	rows, err := q.Query(ctx, `SELECT id::text, profile_type, archived FROM public.user_profiles
		WHERE account_owner_id = $1::uuid ORDER BY profile_type <> 'self', created_at, id`, a.ID)
	if err != nil {
		return a, explain(err)
	}
	a.Profiles, err = pgx.CollectRows(rows, func(r pgx.CollectableRow) (Profile, error) {
		var p Profile
		return p, r.Scan(&p.ID, &p.Type, &p.Archived)
	})
	if a.Profiles == nil {
		a.Profiles = []Profile{}
	}
	return a, explain(err)
}

// ProfileUsage is one profile's usage in a period (the per-profile breakdown
// of an account's totals).
type ProfileUsage struct {
	AccountID     string `json:"account_id" yaml:"account_id"`
	ProfileID     string `json:"profile_id" yaml:"profile_id"`
	ProfileType   string `json:"profile_type" yaml:"profile_type"`
	ShellFiles    int64  `json:"shell_files" yaml:"shell_files"`
	Pages         int64  `json:"pages" yaml:"pages"`
	BytesUploaded int64  `json:"bytes_uploaded" yaml:"bytes_uploaded"`
	AITokens      int64  `json:"ai_tokens" yaml:"ai_tokens"`
	AIJobs        int64  `json:"ai_jobs" yaml:"ai_jobs"`
	AISeconds     int64  `json:"ai_seconds" yaml:"ai_seconds"`
	StorageBytes  int64  `json:"storage_bytes" yaml:"storage_bytes"`
}

// Breakdown lists the per-profile usage of the period containing month for
// one account ("" = every account). Profiles without usage are included
// when accountID is given. Storage is the current level.
func Breakdown(ctx context.Context, q db.DB, accountID string, month time.Time) ([]ProfileUsage, error) {
	period := PeriodStart(month)
	rows, err := q.Query(ctx, `
		WITH ids AS (
		  SELECT up.id AS profile_id, up.account_owner_id AS account_id, up.profile_type
		  FROM public.user_profiles up WHERE $1 <> '' AND up.account_owner_id = nullif($1, '')::uuid
		  UNION
		  SELECT m.profile_id, m.account_id, coalesce(up.profile_type, '(deleted)')
		  FROM public.usage_monthly m LEFT JOIN public.user_profiles up ON up.id = m.profile_id
		  WHERE m.period_start = $2 AND ($1 = '' OR m.account_id = nullif($1, '')::uuid)
		  UNION
		  SELECT s.profile_id, s.account_id, coalesce(up.profile_type, '(deleted)')
		  FROM public.usage_storage s LEFT JOIN public.user_profiles up ON up.id = s.profile_id
		  WHERE s.storage_bytes <> 0 AND ($1 = '' OR s.account_id = nullif($1, '')::uuid)
		)
		SELECT DISTINCT ON (i.account_id, i.profile_id) i.account_id::text, i.profile_id::text, i.profile_type,
		       coalesce(m.shell_files, 0), coalesce(m.pages, 0), coalesce(m.bytes_uploaded, 0),
		       coalesce(m.ai_tokens, 0), coalesce(m.ai_jobs, 0), coalesce(m.ai_seconds, 0), coalesce(s.storage_bytes, 0)
		FROM ids i
		LEFT JOIN public.usage_monthly m ON m.profile_id = i.profile_id AND m.period_start = $2
		LEFT JOIN public.usage_storage s ON s.profile_id = i.profile_id
		ORDER BY i.account_id, i.profile_id, (i.profile_type = '(deleted)')`, accountID, period)
	if err != nil {
		return nil, explain(err)
	}
	out, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (ProfileUsage, error) {
		var p ProfileUsage
		return p, r.Scan(&p.AccountID, &p.ProfileID, &p.ProfileType, &p.ShellFiles, &p.Pages, &p.BytesUploaded,
			&p.AITokens, &p.AIJobs, &p.AISeconds, &p.StorageBytes)
	})
	if out == nil {
		out = []ProfileUsage{}
	}
	return out, explain(err)
}

// PeriodStart is the first day (UTC) of the calendar month containing t.
func PeriodStart(t time.Time) time.Time {
	t = t.UTC()
	return time.Date(t.Year(), t.Month(), 1, 0, 0, 0, 0, time.UTC)
}

// ParseMonth parses YYYY-MM into its period start.
func ParseMonth(s string) (time.Time, error) {
	t, err := time.Parse("2006-01", strings.TrimSpace(s))
	if err != nil {
		return time.Time{}, fmt.Errorf("invalid month %q: use YYYY-MM, e.g. %s", s, time.Now().UTC().Format("2006-01"))
	}
	return t, nil
}

// ---------------------------------------------------------------------------
// Tracking
// ---------------------------------------------------------------------------

// TrackResult is what the tracking functions return.
type TrackResult struct {
	Recorded    bool     `json:"recorded" yaml:"recorded"`
	Duplicate   bool     `json:"duplicate" yaml:"duplicate"`
	Reason      string   `json:"reason,omitempty" yaml:"reason,omitempty"`
	EventID     int64    `json:"event_id,omitempty" yaml:"event_id,omitempty"`
	AccountID   string   `json:"account_id,omitempty" yaml:"account_id,omitempty"`
	ProfileID   string   `json:"profile_id,omitempty" yaml:"profile_id,omitempty"`
	PeriodStart string   `json:"period_start,omitempty" yaml:"period_start,omitempty"`
	OverLimit   bool     `json:"over_limit" yaml:"over_limit"`
	OverLimits  []string `json:"over_limits" yaml:"over_limits"`
	LimitHits   []string `json:"limit_hits" yaml:"limit_hits"`
}

func scanTrack(row pgx.Row) (TrackResult, error) {
	var raw []byte
	var r TrackResult
	if err := row.Scan(&raw); err != nil {
		return r, explain(err)
	}
	return r, json.Unmarshal(raw, &r)
}

// TrackUpload calls track_shell_file_upload_usage. A zero at means now.
func TrackUpload(ctx context.Context, q db.DB, profileID, shellFileID string, bytes int64, pages int, at time.Time) (TrackResult, error) {
	return scanTrack(q.QueryRow(ctx, `SELECT public.track_shell_file_upload_usage($1::uuid, $2::uuid, $3, $4, coalesce($5, now()))`,
		profileID, shellFileID, bytes, pages, nullTime(at)))
}

// TrackAI calls track_ai_processing_usage. A zero at means now.
func TrackAI(ctx context.Context, q db.DB, profileID, jobID string, tokens, seconds int, at time.Time) (TrackResult, error) {
	return scanTrack(q.QueryRow(ctx, `SELECT public.track_ai_processing_usage($1::uuid, $2::uuid, $3, $4, coalesce($5, now()))`,
		profileID, jobID, tokens, seconds, nullTime(at)))
}

func nullTime(t time.Time) *time.Time {
	if t.IsZero() {
		return nil
	}
	return &t
}

// UploadCheck is check_upload_allowed's answer.
type UploadCheck struct {
	Allowed  bool    `json:"allowed" yaml:"allowed"`
	Enforced bool    `json:"enforced" yaml:"enforced"`
	PlanType string  `json:"plan_type" yaml:"plan_type"`
	Message  *string `json:"message" yaml:"message"`
	Exceeded []struct {
		Limit      string `json:"limit" yaml:"limit"`
		Used       int64  `json:"used" yaml:"used"`
		LimitValue int64  `json:"limit_value" yaml:"limit_value"`
		Requested  int64  `json:"requested" yaml:"requested"`
	} `json:"exceeded" yaml:"exceeded"`
}

// CheckUpload calls check_upload_allowed.
func CheckUpload(ctx context.Context, q db.DB, profileID string, bytes int64, pages int) (UploadCheck, error) {
	var raw []byte
	var c UploadCheck
	if err := q.QueryRow(ctx, `SELECT public.check_upload_allowed($1::uuid, $2, $3)`, profileID, bytes, pages).Scan(&raw); err != nil {
		return c, explain(err)
	}
	return c, json.Unmarshal(raw, &c)
}

// ---------------------------------------------------------------------------
// Report
// ---------------------------------------------------------------------------

// ReportRow is one account in a period.
type ReportRow struct {
	AccountID         string   `json:"account_id" yaml:"account_id"`
	Email             *string  `json:"email" yaml:"email"`
	PlanType          string   `json:"plan_type" yaml:"plan_type"`
	Profiles          int64    `json:"profiles" yaml:"profiles"`
	ShellFiles        int64    `json:"shell_files" yaml:"shell_files"`
	ShellFilesLimit   *int64   `json:"shell_files_limit" yaml:"shell_files_limit"`
	ShellFilesPct     *float64 `json:"shell_files_pct" yaml:"shell_files_pct"`
	Pages             int64    `json:"pages" yaml:"pages"`
	PagesLimit        *int64   `json:"pages_limit" yaml:"pages_limit"`
	PagesPct          *float64 `json:"pages_pct" yaml:"pages_pct"`
	AITokens          int64    `json:"ai_tokens" yaml:"ai_tokens"`
	AITokensLimit     *int64   `json:"ai_tokens_limit" yaml:"ai_tokens_limit"`
	AITokensPct       *float64 `json:"ai_tokens_pct" yaml:"ai_tokens_pct"`
	StorageBytes      int64    `json:"storage_bytes" yaml:"storage_bytes"`
	StorageLimitBytes *int64   `json:"storage_limit_bytes" yaml:"storage_limit_bytes"`
	StoragePct        *float64 `json:"storage_pct" yaml:"storage_pct"`
	BytesUploaded     int64    `json:"bytes_uploaded" yaml:"bytes_uploaded"`
	AIJobs            int64    `json:"ai_jobs" yaml:"ai_jobs"`
	AISeconds         int64    `json:"ai_seconds" yaml:"ai_seconds"`
	OverLimit         bool     `json:"over_limit" yaml:"over_limit"`
	MaxPct            *float64 `json:"max_pct" yaml:"max_pct"`
}

// ReportParams selects the report.
type ReportParams struct {
	Month         time.Time // any time in the period; zero = current month
	Plan          string    // only accounts on this plan
	OverLimitOnly bool
	Limit         int // at most this many rows (0 = all)
}

// Report calls usage_report: every account for a period, over-limit first.
func Report(ctx context.Context, q db.DB, p ReportParams) ([]ReportRow, error) {
	var month *time.Time
	if !p.Month.IsZero() {
		m := PeriodStart(p.Month)
		month = &m
	}
	sql := `SELECT account_id::text, email, plan_type, profiles, shell_files, shell_files_limit, shell_files_pct::float8,
		pages, pages_limit, pages_pct::float8, ai_tokens, ai_tokens_limit, ai_tokens_pct::float8,
		storage_bytes, storage_limit_bytes, storage_pct::float8, bytes_uploaded, ai_jobs, ai_seconds, over_limit, max_pct::float8
		FROM public.usage_report($1::date, nullif($2, ''), $3)`
	args := []any{month, p.Plan, p.OverLimitOnly}
	if p.Limit > 0 {
		sql += ` LIMIT $4`
		args = append(args, p.Limit)
	}
	rows, err := q.Query(ctx, sql, args...)
	if err != nil {
		return nil, explain(err)
	}
	out, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (ReportRow, error) {
		var x ReportRow
		return x, r.Scan(&x.AccountID, &x.Email, &x.PlanType, &x.Profiles, &x.ShellFiles, &x.ShellFilesLimit, &x.ShellFilesPct,
			&x.Pages, &x.PagesLimit, &x.PagesPct, &x.AITokens, &x.AITokensLimit, &x.AITokensPct,
			&x.StorageBytes, &x.StorageLimitBytes, &x.StoragePct, &x.BytesUploaded, &x.AIJobs, &x.AISeconds, &x.OverLimit, &x.MaxPct)
	})
	if out == nil {
		out = []ReportRow{}
	}
	return out, explain(err)
}

// ---------------------------------------------------------------------------
// Events
// ---------------------------------------------------------------------------

// Event is one ledger row. Metadata holds only counts, plan keys and metric
// names (never file names or payloads).
type Event struct {
	ID                int64           `json:"id" yaml:"id"`
	OccurredAt        time.Time       `json:"occurred_at" yaml:"occurred_at"`
	PeriodStart       string          `json:"period_start" yaml:"period_start"`
	Type              string          `json:"event_type" yaml:"event_type"`
	AccountID         string          `json:"account_id" yaml:"account_id"`
	ProfileID         *string         `json:"profile_id" yaml:"profile_id"`
	ShellFileID       *string         `json:"shell_file_id" yaml:"shell_file_id"`
	JobID             *string         `json:"job_id" yaml:"job_id"`
	Files             int64           `json:"files" yaml:"files"`
	Pages             int64           `json:"pages" yaml:"pages"`
	Bytes             int64           `json:"bytes" yaml:"bytes"`
	Tokens            int64           `json:"tokens" yaml:"tokens"`
	Jobs              int64           `json:"jobs" yaml:"jobs"`
	Seconds           int64           `json:"seconds" yaml:"seconds"`
	StorageDeltaBytes int64           `json:"storage_delta_bytes" yaml:"storage_delta_bytes"`
	IdempotencyKey    string          `json:"idempotency_key" yaml:"idempotency_key"`
	Metadata          json.RawMessage `json:"metadata" yaml:"metadata"`
}

// EventTypes are the valid event_type values.
var EventTypes = []string{"shell_file_uploaded", "shell_file_processed", "ai_processing_started",
	"ai_processing_completed", "page_extracted", "storage_used", "plan_upgraded", "plan_downgraded", "limit_hit"}

// EventsParams selects events.
type EventsParams struct {
	ProfileID string    // events of this profile, or
	AccountID string    // of this whole account (incl. account-level events)
	Month     time.Time // zero: all periods
	Type      string
	Limit     int // default 100
}

// Events lists ledger rows, newest first.
func Events(ctx context.Context, q db.DB, p EventsParams) ([]Event, error) {
	if p.Limit <= 0 {
		p.Limit = 100
	}
	var month *time.Time
	if !p.Month.IsZero() {
		m := PeriodStart(p.Month)
		month = &m
	}
	rows, err := q.Query(ctx, `SELECT id, occurred_at, to_char(period_start, 'YYYY-MM-DD'), event_type, account_id::text,
		profile_id::text, shell_file_id::text, job_id::text, files, pages, bytes, tokens, jobs, seconds,
		storage_delta_bytes, idempotency_key, metadata
		FROM public.usage_events
		WHERE ($1 = '' OR profile_id = nullif($1, '')::uuid)
		  AND ($2 = '' OR account_id = nullif($2, '')::uuid)
		  AND ($3::date IS NULL OR period_start = $3::date)
		  AND ($4 = '' OR event_type = $4)
		ORDER BY occurred_at DESC, id DESC
		LIMIT $5`, p.ProfileID, p.AccountID, month, p.Type, p.Limit)
	if err != nil {
		return nil, explain(err)
	}
	out, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (Event, error) {
		var e Event
		var md []byte
		err := r.Scan(&e.ID, &e.OccurredAt, &e.PeriodStart, &e.Type, &e.AccountID, &e.ProfileID, &e.ShellFileID, &e.JobID,
			&e.Files, &e.Pages, &e.Bytes, &e.Tokens, &e.Jobs, &e.Seconds, &e.StorageDeltaBytes, &e.IdempotencyKey, &md)
		e.Metadata = md
		return e, err
	})
	if out == nil {
		out = []Event{}
	}
	return out, explain(err)
}

// ---------------------------------------------------------------------------
// Rebuild and verify
// ---------------------------------------------------------------------------

// Drift is one difference between a stored aggregate and the events.
// Stored or Expected nil: the row is missing on that side.
type Drift struct {
	Aggregate   string  `json:"aggregate" yaml:"aggregate"`
	ProfileID   string  `json:"profile_id" yaml:"profile_id"`
	PeriodStart *string `json:"period_start" yaml:"period_start"`
	Metric      string  `json:"metric" yaml:"metric"`
	Stored      *int64  `json:"stored" yaml:"stored"`
	Expected    *int64  `json:"expected" yaml:"expected"`
}

// Verify calls verify_usage_aggregates (zero month: every period).
func Verify(ctx context.Context, q db.DB, month time.Time) ([]Drift, error) {
	var m *time.Time
	if !month.IsZero() {
		p := PeriodStart(month)
		m = &p
	}
	rows, err := q.Query(ctx, `SELECT aggregate, profile_id::text, to_char(period_start, 'YYYY-MM-DD'), metric, stored, expected
		FROM public.verify_usage_aggregates($1::date)`, m)
	if err != nil {
		return nil, explain(err)
	}
	out, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (Drift, error) {
		var d Drift
		return d, r.Scan(&d.Aggregate, &d.ProfileID, &d.PeriodStart, &d.Metric, &d.Stored, &d.Expected)
	})
	if out == nil {
		out = []Drift{}
	}
	return out, explain(err)
}

// RebuildResult is rebuild_usage_aggregates' answer.
type RebuildResult struct {
	Period      *string `json:"period" yaml:"period"`
	MonthlyRows int64   `json:"monthly_rows" yaml:"monthly_rows"`
	StorageRows int64   `json:"storage_rows" yaml:"storage_rows"`
	Corrected   int64   `json:"corrected" yaml:"corrected"`
	DryRun      bool    `json:"dry_run" yaml:"dry_run"`
}

var errDryRun = errors.New("dry run: rolled back")

// Rebuild recomputes the aggregates from the events in one transaction
// (zero month: every period). With dryRun the rebuild runs and is rolled
// back, so the result says what would be corrected.
func Rebuild(ctx context.Context, conn db.TxBeginner, month time.Time, actor, reason string, dryRun bool) (RebuildResult, error) {
	var m *time.Time
	if !month.IsZero() {
		p := PeriodStart(month)
		m = &p
	}
	var res RebuildResult
	err := db.InTx(ctx, conn, func(tx pgx.Tx) error {
		var raw []byte
		if err := tx.QueryRow(ctx, `SELECT public.rebuild_usage_aggregates($1::date, $2, nullif($3, ''))`, m, actor, reason).Scan(&raw); err != nil {
			return explain(err)
		}
		if err := json.Unmarshal(raw, &res); err != nil {
			return err
		}
		if dryRun {
			res.DryRun = true
			return errDryRun
		}
		return nil
	})
	if errors.Is(err, errDryRun) {
		return res, nil
	}
	return res, err
}
