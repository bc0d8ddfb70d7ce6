package cli

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/spf13/cobra"

	"github.com/v3ctl/v3ctl/internal/db"
	"github.com/v3ctl/v3ctl/internal/queue"
)

func init() { Register(newJobsCmd) }

func newJobsCmd(a *App) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "jobs",
		Short: "Inspect and operate the job queue: enqueue, list, show, stats, retry, cancel, purge, reclaim, watch",
		Long: `The V3 job queue: unfinished jobs (pending, processing) live in job_queue,
finished ones (completed, cancelled, dead_letter) in job_queue_archive.
Every state change is audited. See docs/queue.md for states, backoff and reclaim.`,
		Example: `  v3ctl jobs enqueue --type ai_processing --lane ai_queue_simple --payload @job.json
  v3ctl jobs list --status dead_letter --since 24h
  v3ctl jobs show 6f1c0e9e-...            # add --payload to see the payload
  v3ctl jobs stats -o json
  v3ctl jobs retry --type ai_processing --since 1h --yes
  v3ctl jobs reclaim                      # from cron; exit 0/1/9
  v3ctl jobs watch --interval 5s`,
	}
	cmd.AddCommand(newJobsEnqueueCmd(a), newJobsListCmd(a), newJobsShowCmd(a), newJobsStatsCmd(a),
		newJobsRetryCmd(a), newJobsCancelCmd(a), newJobsPurgeCmd(a), newJobsReclaimCmd(a), newJobsWatchCmd(a))
	return cmd
}

// sqlErr maps validation errors raised by the queue functions to exit 2 and
// connection failures to exit 9.
func sqlErr(err error) error {
	if err == nil {
		return nil
	}
	if db.IsInvalidInput(err) {
		return &ExitErr{Code: ExitUsage, Err: err}
	}
	var ce *pgconn.ConnectError
	if errors.As(err, &ce) {
		return WithCode(ExitUnavailable, err)
	}
	return err
}

var durationPart = regexp.MustCompile(`^(\d+(?:\.\d+)?)(ms|s|m|h|d|w)`)

// parseAge parses a duration such as 7d, 12h, 30m, 90s, 2w or 1d12h (also
// Go's forms like 1h30m). It refuses empty, negative and unit-less values.
func parseAge(s string) (time.Duration, error) {
	in := strings.TrimSpace(strings.ToLower(s))
	if in == "" {
		return 0, errors.New("empty duration")
	}
	if in == "0" {
		return 0, nil
	}
	var total time.Duration
	rest := in
	for rest != "" {
		m := durationPart.FindStringSubmatch(rest)
		if m == nil {
			return 0, fmt.Errorf("invalid duration %q: use a number with a unit, e.g. 7d, 12h, 30m, 90s, 2w or 1d12h", s)
		}
		f, err := strconv.ParseFloat(m[1], 64)
		if err != nil {
			return 0, fmt.Errorf("invalid duration %q: %v", s, err)
		}
		unit := map[string]time.Duration{"ms": time.Millisecond, "s": time.Second, "m": time.Minute, "h": time.Hour,
			"d": 24 * time.Hour, "w": 7 * 24 * time.Hour}[m[2]]
		if f*float64(unit) > float64(100*365*24*time.Hour) {
			return 0, fmt.Errorf("invalid duration %q: too long", s)
		}
		total += time.Duration(f * float64(unit))
		if total > 100*365*24*time.Hour {
			return 0, fmt.Errorf("invalid duration %q: too long (at most 100 years)", s)
		}
		rest = rest[len(m[0]):]
	}
	return total, nil
}

// parseSince accepts a duration ago (24h, 7d) or an RFC 3339 timestamp.
func parseSince(s string) (time.Time, error) {
	if t, err := time.Parse(time.RFC3339, s); err == nil {
		return t, nil
	}
	d, err := parseAge(s)
	if err != nil {
		return time.Time{}, fmt.Errorf("invalid --since %q: use a duration ago (24h, 7d) or an RFC 3339 time (2026-01-02T15:04:05Z)", s)
	}
	return time.Now().Add(-d), nil
}

var uuidRE = regexp.MustCompile(`^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$`)

func checkUUID(what, s string) error {
	if !uuidRE.MatchString(s) {
		return UsageErrorf("invalid %s %q: expected a UUID such as 6f1c0e9e-2a44-4c1e-9d7b-0b5a3c1f8e21", what, s)
	}
	return nil
}

// readPayload reads --payload: inline JSON, @file, or - for stdin. It must be
// a non-empty JSON object.
func readPayload(a *App, v string) (json.RawMessage, error) {
	var b []byte
	switch {
	case v == "-":
		var err error
		if b, err = io.ReadAll(a.In); err != nil {
			return nil, fmt.Errorf("read payload from stdin: %w", err)
		}
	case strings.HasPrefix(v, "@"):
		var err error
		if b, err = os.ReadFile(v[1:]); err != nil {
			return nil, UsageErrorf("read --payload file: %v", err)
		}
	default:
		b = []byte(v)
	}
	var obj map[string]json.RawMessage
	if err := json.Unmarshal(b, &obj); err != nil || obj == nil {
		return nil, UsageErrorf("--payload must be a JSON object (inline, @file or - for stdin)")
	}
	if len(obj) == 0 {
		return nil, UsageErrorf("--payload must be a non-empty JSON object")
	}
	return json.RawMessage(b), nil
}

func checkTypeLane(typ, lane string) error {
	if typ != "" {
		if err := oneOf("type", typ, queue.JobTypes); err != nil {
			return err
		}
	}
	if lane != "" {
		valid := queue.AllLanes
		if typ != "" {
			valid = queue.Lanes[typ]
			if len(valid) == 0 {
				return UsageErrorf("invalid --lane %q: job type %s has no lanes", lane, typ)
			}
		}
		if err := oneOf("lane", lane, valid); err != nil {
			return err
		}
	}
	return nil
}

// dryRunTx runs fn in a transaction that is always rolled back.
func dryRunTx(ctx context.Context, a *App, fn func(tx pgx.Tx) error) error {
	pool, err := a.DB(ctx)
	if err != nil {
		return err
	}
	tx, err := pool.Begin(ctx)
	if err != nil {
		return sqlErr(err)
	}
	defer func() { _ = tx.Rollback(ctx) }()
	return fn(tx)
}

// setActor makes the audit rows of this transaction name the CLI's actor.
func setActor(ctx context.Context, tx pgx.Tx, actor string) error {
	_, err := tx.Exec(ctx, `SELECT set_config('v3ctl.actor', $1, true)`, actor)
	return err
}

// inTx runs fn in a transaction (rolled back when dry), with the actor set.
func inTx(ctx context.Context, a *App, dry bool, fn func(tx pgx.Tx) error) error {
	if dry {
		return dryRunTx(ctx, a, func(tx pgx.Tx) error {
			if err := setActor(ctx, tx, a.Actor()); err != nil {
				return err
			}
			return fn(tx)
		})
	}
	pool, err := a.DB(ctx)
	if err != nil {
		return err
	}
	return sqlErr(db.InTx(ctx, pool, func(tx pgx.Tx) error {
		if err := setActor(ctx, tx, a.Actor()); err != nil {
			return err
		}
		return fn(tx)
	}))
}

func newJobsEnqueueCmd(a *App) *cobra.Command {
	var p queue.EnqueueParams
	var payload, delay, at string
	var maxRetries int
	var dry bool
	cmd := &cobra.Command{
		Use:   "enqueue",
		Short: "Add a job (validated by enqueue_job_v3; wakes idle workers)",
		Long: `Add a job. The payload is a non-empty JSON object given inline, as @file or as -
(stdin). With --idempotency-key, enqueuing again while the first job is
unfinished returns that job instead of a new one.`,
		Example: `  v3ctl jobs enqueue --type ai_processing --lane ai_queue_complex --payload @job.json --priority 2
  echo '{"report":"monthly"}' | v3ctl jobs enqueue --type report_generation --payload - --delay 10m
  v3ctl jobs enqueue --type audit_cleanup --payload '{"scope":"all"}' --dry-run`,
		Args: cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			if p.JobType == "" {
				return UsageErrorf("--type is required; valid types: %s", strings.Join(queue.JobTypes, ", "))
			}
			if err := checkTypeLane(p.JobType, p.Lane); err != nil {
				return err
			}
			if err := oneOf("category", p.Category, queue.Categories); err != nil {
				return err
			}
			if p.Priority < 1 || p.Priority > 10 {
				return UsageErrorf("invalid --priority %d: 1 (most urgent) to 10", p.Priority)
			}
			if maxRetries < 0 || maxRetries > 100 {
				return UsageErrorf("invalid --max-retries %d: 0 to 100", maxRetries)
			}
			p.MaxRetries = &maxRetries
			if payload == "" {
				return UsageErrorf("--payload is required: a JSON object, @file or - for stdin")
			}
			var err error
			if p.Payload, err = readPayload(a, payload); err != nil {
				return err
			}
			if delay != "" && at != "" {
				return UsageErrorf("use either --delay or --at, not both")
			}
			if delay != "" {
				d, err := parseAge(delay)
				if err != nil {
					return UsageErrorf("invalid --delay: %v", err)
				}
				t := time.Now().Add(d)
				p.ScheduledAt = &t
			}
			if at != "" {
				t, err := time.Parse(time.RFC3339, at)
				if err != nil {
					return UsageErrorf("invalid --at %q: use RFC 3339, e.g. 2026-01-02T15:04:05Z", at)
				}
				p.ScheduledAt = &t
			}
			if p.PatientID != "" {
				if err := checkUUID("--profile", p.PatientID); err != nil {
					return err
				}
			}
			if p.ShellFileID != "" {
				if err := checkUUID("--shell-file", p.ShellFileID); err != nil {
					return err
				}
			}
			if p.JobName == "" {
				p.JobName = p.JobType
			}
			var e queue.Enqueued
			err = inTx(c.Context(), a, dry, func(tx pgx.Tx) error {
				var err error
				e, err = queue.Enqueue(c.Context(), tx, p)
				return sqlErr(err)
			})
			if err != nil {
				return err
			}
			type out struct {
				queue.Enqueued
				DryRun bool `json:"dry_run" yaml:"dry_run"`
			}
			pr := a.Printer()
			if pr.Structured() {
				return pr.Print(out{e, dry}, []string{"JOB ID", "SCHEDULED AT", "DRY RUN"},
					[][]string{{e.JobID, fmtTime(&e.ScheduledAt), strconv.FormatBool(dry)}})
			}
			if dry {
				a.Infof("dry run: the job is valid and would be scheduled at %s; nothing was enqueued", fmtTime(&e.ScheduledAt))
				return nil
			}
			fmt.Fprintln(a.Out, e.JobID)
			a.Infof("enqueued %s job %s, due %s", p.JobType, e.JobID, fmtTime(&e.ScheduledAt))
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&p.JobType, "type", "", "job type: "+strings.Join(queue.JobTypes, ", "))
	f.StringVar(&p.Lane, "lane", "", "lane (shell_file_processing: fast_queue|standard_queue; ai_processing: ai_queue_simple|ai_queue_complex)")
	f.StringVar(&p.JobName, "name", "", "job name (default: the type)")
	f.StringVar(&payload, "payload", "", "payload: a JSON object, @file, or - for stdin")
	f.IntVar(&p.Priority, "priority", 5, "1 (most urgent) to 10")
	f.StringVar(&p.Category, "category", "standard", "category: "+strings.Join(queue.Categories, ", "))
	f.StringVar(&delay, "delay", "", "run after this long (e.g. 30s, 10m, 2h, 1d)")
	f.StringVar(&at, "at", "", "run at this time (RFC 3339)")
	f.StringVar(&p.PatientID, "profile", "", "profile (patient) id")
	f.StringVar(&p.ShellFileID, "shell-file", "", "shell file id")
	f.StringVar(&p.IdempotencyKey, "idempotency-key", "", "return the unfinished job with this key instead of adding another")
	f.StringVar(&p.CorrelationID, "correlation-id", "", "correlation id carried to logs and audit rows")
	f.IntVar(&maxRetries, "max-retries", 3, "retries after the first attempt (0-100)")
	addDryRun(cmd, &dry)
	_ = cmd.RegisterFlagCompletionFunc("type", fixedCompletion(queue.JobTypes))
	_ = cmd.RegisterFlagCompletionFunc("lane", fixedCompletion(queue.AllLanes))
	_ = cmd.RegisterFlagCompletionFunc("category", fixedCompletion(queue.Categories))
	return cmd
}

func fixedCompletion(vals []string) func(*cobra.Command, []string, string) ([]string, cobra.ShellCompDirective) {
	return func(*cobra.Command, []string, string) ([]string, cobra.ShellCompDirective) {
		return vals, cobra.ShellCompDirectiveNoFileComp
	}
}

func lanePtr(s *string) string {
	if s == nil {
		return "-"
	}
	return *s
}

func newJobsListCmd(a *App) *cobra.Command {
	var f queue.ListFilter
	var since string
	cmd := &cobra.Command{
		Use:     "list",
		Aliases: []string{"ls"},
		Short:   "List jobs, newest first (no payloads)",
		Example: `  v3ctl jobs list --status pending,processing
  v3ctl jobs list --status dead_letter --type ai_processing --since 24h -o json
  v3ctl jobs list --profile 0b5a3c1f-... --limit 200`,
		Args: cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			for _, s := range f.Statuses {
				if err := oneOf("status", s, queue.Statuses); err != nil {
					return err
				}
			}
			if err := checkTypeLane(f.JobType, f.Lane); err != nil {
				return err
			}
			if f.PatientID != "" {
				if err := checkUUID("--profile", f.PatientID); err != nil {
					return err
				}
			}
			if since != "" {
				t, err := parseSince(since)
				if err != nil {
					return UsageErrorf("%v", err)
				}
				f.Since = &t
			}
			if f.Limit < 1 || f.Limit > 10000 {
				return UsageErrorf("invalid --limit %d: 1 to 10000", f.Limit)
			}
			pool, err := a.DB(c.Context())
			if err != nil {
				return err
			}
			js, err := queue.List(c.Context(), pool, f)
			if err != nil {
				return sqlErr(err)
			}
			rows := make([][]string, 0, len(js))
			for _, j := range js {
				rows = append(rows, []string{j.ID, j.JobType, lanePtr(j.Lane), paintStatus(a, j.Status), strconv.Itoa(j.Priority),
					fmt.Sprintf("%d/%d", j.RetryCount, j.MaxRetries+1), fmtTime(&j.ScheduledAt), strPtr(j.WorkerID), fmtAgo(j.CreatedAt)})
			}
			return a.Printer().Print(js, []string{"ID", "TYPE", "LANE", "STATUS", "PRIO", "USED/ATTEMPTS", "SCHEDULED", "WORKER", "CREATED"}, rows)
		},
	}
	cmd.Flags().StringSliceVar(&f.Statuses, "status", nil, "statuses (repeat or comma-separate): "+strings.Join(queue.Statuses, ", "))
	cmd.Flags().StringVar(&f.JobType, "type", "", "job type")
	cmd.Flags().StringVar(&f.Lane, "lane", "", "lane")
	cmd.Flags().StringVar(&f.PatientID, "profile", "", "profile (patient) id")
	cmd.Flags().StringVar(&since, "since", "", "created within this long (24h, 7d) or since an RFC 3339 time")
	cmd.Flags().IntVar(&f.Limit, "limit", 50, "at most this many jobs")
	_ = cmd.RegisterFlagCompletionFunc("status", fixedCompletion(queue.Statuses))
	_ = cmd.RegisterFlagCompletionFunc("type", fixedCompletion(queue.JobTypes))
	_ = cmd.RegisterFlagCompletionFunc("lane", fixedCompletion(queue.AllLanes))
	return cmd
}

func paintStatus(a *App, s string) string {
	p := a.Printer()
	switch s {
	case queue.StatusCompleted:
		return p.Paint(stylesOK(), s)
	case queue.StatusDeadLetter, queue.StatusFailed:
		return p.Paint(stylesErr(), s)
	case queue.StatusProcessing:
		return p.Paint(stylesWarn(), s)
	}
	return s
}

func newJobsShowCmd(a *App) *cobra.Command {
	var withPayload bool
	cmd := &cobra.Command{
		Use:   "show ID",
		Short: "Show one job: state, attempts, error history, timings and audit trail",
		Long: `Show one job. The payload and result hold health data and are printed only
with --payload.`,
		Example: `  v3ctl jobs show 6f1c0e9e-2a44-4c1e-9d7b-0b5a3c1f8e21
  v3ctl jobs show 6f1c0e9e-2a44-4c1e-9d7b-0b5a3c1f8e21 --payload -o json`,
		Args: cobra.ExactArgs(1),
		RunE: func(c *cobra.Command, args []string) error {
			if err := checkUUID("job id", args[0]); err != nil {
				return err
			}
			pool, err := a.DB(c.Context())
			if err != nil {
				return err
			}
			d, err := queue.Get(c.Context(), pool, args[0], withPayload)
			if errors.Is(err, queue.ErrNotFound) {
				return WithCode(ExitNotFound, fmt.Errorf("no job with id %s", args[0]))
			}
			if err != nil {
				return sqlErr(err)
			}
			p := a.Printer()
			if p.Structured() {
				return p.Print(d, []string{"ID", "TYPE", "LANE", "STATUS", "PRIORITY", "RETRY COUNT", "MAX RETRIES"},
					[][]string{{d.ID, d.JobType, lanePtr(d.Lane), d.Status, strconv.Itoa(d.Priority), strconv.Itoa(d.RetryCount), strconv.Itoa(d.MaxRetries)}})
			}
			p.KV([][2]string{
				{"id", d.ID}, {"type", d.JobType}, {"lane", lanePtr(d.Lane)}, {"name", d.Name},
				{"category", d.Category}, {"status", paintStatus(a, d.Status)}, {"priority", strconv.Itoa(d.Priority)},
				{"attempts used", fmt.Sprintf("%d of %d (max_retries %d)", d.RetryCount, d.MaxRetries+1, d.MaxRetries)},
				{"reschedules", strconv.Itoa(d.RescheduleCount)},
				{"worker", strPtr(d.WorkerID)}, {"profile", strPtr(d.PatientID)}, {"shell file", strPtr(d.ShellFileID)},
				{"correlation id", strPtr(d.CorrelationID)}, {"idempotency key", strPtr(d.IdempotencyKey)},
				{"created", fmtTime(&d.CreatedAt)}, {"scheduled", fmtTime(&d.ScheduledAt)}, {"started", fmtTime(d.StartedAt)},
				{"heartbeat", fmtTime(d.HeartbeatAt)}, {"finished", fmtTime(d.CompletedAt)}, {"dead letter", fmtTime(d.DeadLetterAt)},
				{"updated", fmtTime(&d.UpdatedAt)},
			})
			var hist []struct {
				Attempt   int     `json:"attempt"`
				At        string  `json:"at"`
				Worker    *string `json:"worker_id"`
				Error     string  `json:"error"`
				Retryable bool    `json:"retryable"`
			}
			_ = json.Unmarshal(d.ErrorHistory, &hist)
			if len(hist) > 0 {
				fmt.Fprintln(a.Out, "\nerror history:")
				rows := make([][]string, 0, len(hist))
				for _, h := range hist {
					rows = append(rows, []string{strconv.Itoa(h.Attempt), h.At, strPtr(h.Worker), strconv.FormatBool(h.Retryable), h.Error})
				}
				if err := p.Table([]string{"ATTEMPT", "AT", "WORKER", "RETRYABLE", "ERROR"}, rows); err != nil {
					return err
				}
			}
			fmt.Fprintln(a.Out, "\naudit trail:")
			rows := make([][]string, 0, len(d.Audit))
			for _, e := range d.Audit {
				at := e.At
				rows = append(rows, []string{fmtTime(&at), e.Operation, auditStatus(e.OldValues), auditStatus(e.NewValues), strPtr(e.ChangedBy), strPtr(e.Reason)})
			}
			if err := p.Table([]string{"AT", "OPERATION", "FROM", "TO", "BY", "REASON"}, rows); err != nil {
				return err
			}
			if withPayload {
				fmt.Fprintln(a.Out, "\npayload:")
				fmt.Fprintln(a.Out, string(d.Payload))
				if len(d.Result) > 0 {
					fmt.Fprintln(a.Out, "\nresult:")
					fmt.Fprintln(a.Out, string(d.Result))
				}
			}
			return nil
		},
	}
	cmd.Flags().BoolVar(&withPayload, "payload", false, "also print the payload and result (health data: handle with care)")
	return cmd
}

func auditStatus(b json.RawMessage) string {
	var v struct {
		Status string `json:"status"`
	}
	if json.Unmarshal(b, &v) != nil || v.Status == "" {
		return "-"
	}
	return v.Status
}

func fmtSeconds(s float64) string {
	return (time.Duration(s) * time.Second).Round(time.Second).String()
}

func printStats(a *App, s queue.Stats) error {
	p := a.Printer()
	if p.Structured() {
		rows := make([][]string, 0, len(s.Counts))
		for _, c := range s.Counts {
			rows = append(rows, []string{c.Status, c.JobType, lanePtr(c.Lane), strconv.FormatInt(c.Count, 10)})
		}
		return p.Print(s, []string{"STATUS", "TYPE", "LANE", "COUNT"}, rows)
	}
	stuck := strconv.FormatInt(s.Stuck, 10)
	if s.Stuck > 0 {
		stuck = p.Paint(stylesWarn(), stuck+" (run: v3ctl jobs reclaim)")
	}
	dead := strconv.FormatInt(s.DeadLetters, 10)
	if s.DeadLetters > 0 {
		dead = p.Paint(stylesErr(), dead)
	}
	pairs := [][2]string{
		{"at", fmtTime(&s.At)},
		{"pending", fmt.Sprintf("%d (%d due)", s.Pending, s.Due)},
		{"processing", strconv.FormatInt(s.Processing, 10)},
		{"oldest due job waiting", fmtSeconds(s.OldestDueAgeSeconds)},
		{"stuck processing", stuck + fmt.Sprintf(" (no heartbeat for %ds)", s.TimeoutSeconds)},
		{"dead letters", dead},
		{"completed 5m / 1h", fmt.Sprintf("%d / %d  (%.1f/min, %.1f/min)", s.Completed5m, s.Completed1h, s.PerMinute5m, s.PerMinute1h)},
		{"dead-lettered 5m / 1h", fmt.Sprintf("%d / %d", s.DeadLettered5m, s.DeadLettered1h)},
	}
	if s.MaintenanceMode {
		pairs = append(pairs, [2]string{"maintenance mode", p.Paint(stylesWarn(), "ON: workers do not claim")})
	}
	p.KV(pairs)
	fmt.Fprintf(a.Out, "\nby status, type and lane (finished jobs: last %s):\n", (time.Duration(s.WindowSeconds) * time.Second).String())
	rows := make([][]string, 0, len(s.Counts))
	for _, c := range s.Counts {
		rows = append(rows, []string{paintStatus(a, c.Status), c.JobType, lanePtr(c.Lane), strconv.FormatInt(c.Count, 10)})
	}
	return p.Table([]string{"STATUS", "TYPE", "LANE", "COUNT"}, rows)
}

func newJobsStatsCmd(a *App) *cobra.Command {
	var window string
	cmd := &cobra.Command{
		Use:   "stats",
		Short: "Counts by status × type × lane, oldest due job, stuck jobs, dead letters and throughput",
		Example: `  v3ctl jobs stats
  v3ctl jobs stats --window 7d -o json`,
		Args: cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			w, err := parseAge(window)
			if err != nil || w <= 0 {
				return UsageErrorf("invalid --window %q: a positive duration such as 24h or 7d", window)
			}
			pool, err := a.DB(c.Context())
			if err != nil {
				return err
			}
			s, err := queue.GetStats(c.Context(), pool, w)
			if err != nil {
				return sqlErr(err)
			}
			return printStats(a, s)
		},
	}
	cmd.Flags().StringVar(&window, "window", "24h", "count finished jobs of this period")
	return cmd
}

func newJobsRetryCmd(a *App) *cobra.Command {
	var f queue.RequeueFilter
	var since, reason string
	var all, dry bool
	cmd := &cobra.Command{
		Use:   "retry [ID...]",
		Short: "Requeue dead-lettered jobs (by id, or by --type/--lane/--since, or --all) with fresh attempts",
		Long: `Bring dead letters back to pending with retry_count 0; their error history is
kept. Selecting by filter asks for confirmation (--yes without a terminal).`,
		Example: `  v3ctl jobs retry 6f1c0e9e-2a44-4c1e-9d7b-0b5a3c1f8e21
  v3ctl jobs retry --type ai_processing --since 2h --yes --reason "vendor outage over"
  v3ctl jobs retry --all --dry-run`,
		RunE: func(c *cobra.Command, args []string) error {
			for _, id := range args {
				if err := checkUUID("job id", id); err != nil {
					return err
				}
			}
			if err := checkTypeLane(f.JobType, f.Lane); err != nil {
				return err
			}
			if since != "" {
				t, err := parseSince(since)
				if err != nil {
					return UsageErrorf("%v", err)
				}
				f.Since = &t
			}
			filtered := f.JobType != "" || f.Lane != "" || f.Since != nil
			if len(args) == 0 && !filtered && !all {
				return UsageErrorf("name job ids, or select with --type, --lane or --since, or pass --all")
			}
			if len(args) > 0 && (filtered || all) {
				return UsageErrorf("give either job ids or filters, not both")
			}
			f.JobIDs = args
			if len(args) == 0 && !dry {
				if err := a.Confirm("requeue the selected dead letters"); err != nil {
					return err
				}
			}
			var ids []string
			err := inTx(c.Context(), a, dry, func(tx pgx.Tx) error {
				var err error
				ids, err = queue.Requeue(c.Context(), tx, f, a.Actor(), reason)
				return sqlErr(err)
			})
			if err != nil {
				return err
			}
			type out struct {
				Requeued []string `json:"requeued" yaml:"requeued"`
				DryRun   bool     `json:"dry_run" yaml:"dry_run"`
			}
			p := a.Printer()
			if p.Structured() {
				rows := make([][]string, 0, len(ids))
				for _, id := range ids {
					rows = append(rows, []string{id})
				}
				return p.Print(out{ids, dry}, []string{"REQUEUED"}, rows)
			}
			for _, id := range ids {
				fmt.Fprintln(a.Out, id)
			}
			verb := "requeued"
			if dry {
				verb = "dry run: would requeue"
			}
			a.Infof("%s %d dead-lettered job(s)", verb, len(ids))
			if len(args) > len(ids) {
				a.Infof("%d of the named jobs are not dead letters (or their idempotency key is in use); left unchanged", len(args)-len(ids))
				return WithCode(ExitError, nil)
			}
			return nil
		},
	}
	cmd.Flags().StringVar(&f.JobType, "type", "", "only this job type")
	cmd.Flags().StringVar(&f.Lane, "lane", "", "only this lane")
	cmd.Flags().StringVar(&since, "since", "", "dead-lettered within this long (2h, 1d) or since an RFC 3339 time")
	cmd.Flags().BoolVar(&all, "all", false, "every dead letter (up to --limit)")
	cmd.Flags().IntVar(&f.Limit, "limit", 1000, "at most this many jobs")
	cmd.Flags().StringVar(&reason, "reason", "", "why, recorded in the audit log")
	addDryRun(cmd, &dry)
	return cmd
}

func newJobsCancelCmd(a *App) *cobra.Command {
	var reason string
	var dry bool
	cmd := &cobra.Command{
		Use:     "cancel ID...",
		Short:   "Cancel unfinished jobs (a worker holding one loses its lease)",
		Example: `  v3ctl jobs cancel 6f1c0e9e-2a44-4c1e-9d7b-0b5a3c1f8e21 --reason "duplicate upload" --yes`,
		Args:    cobra.MinimumNArgs(1),
		RunE: func(c *cobra.Command, args []string) error {
			for _, id := range args {
				if err := checkUUID("job id", id); err != nil {
					return err
				}
			}
			if !dry {
				if err := a.Confirm(fmt.Sprintf("cancel %d job(s)", len(args))); err != nil {
					return err
				}
			}
			type result struct {
				ID     string `json:"id" yaml:"id"`
				Result string `json:"result" yaml:"result"`
			}
			var res []result
			code := ExitOK
			err := inTx(c.Context(), a, dry, func(tx pgx.Tx) error {
				for _, id := range args {
					ok, err := queue.Cancel(c.Context(), tx, id, reason, a.Actor())
					if err != nil {
						return sqlErr(err)
					}
					if ok {
						res = append(res, result{id, "cancelled"})
						continue
					}
					var st string
					err = tx.QueryRow(c.Context(), `SELECT status FROM public.job_queue_all WHERE id = $1::uuid`, id).Scan(&st)
					switch {
					case errors.Is(err, pgx.ErrNoRows):
						res = append(res, result{id, "not found"})
						if code == ExitOK {
							code = ExitNotFound
						}
					case err != nil:
						return sqlErr(err)
					default:
						res = append(res, result{id, "already " + st})
						code = ExitError
					}
				}
				return nil
			})
			if err != nil {
				return err
			}
			rows := make([][]string, 0, len(res))
			for _, r := range res {
				rows = append(rows, []string{r.ID, r.Result})
			}
			if err := a.Printer().Print(res, []string{"ID", "RESULT"}, rows); err != nil {
				return err
			}
			if dry {
				a.Infof("dry run: nothing was cancelled")
			}
			if code != ExitOK {
				return WithCode(code, nil)
			}
			return nil
		},
	}
	cmd.Flags().StringVar(&reason, "reason", "", "why, recorded in the audit log")
	addDryRun(cmd, &dry)
	return cmd
}

func newJobsPurgeCmd(a *App) *cobra.Command {
	var olderThan string
	var statuses []string
	var includeDead, dry bool
	cmd := &cobra.Command{
		Use:   "purge --older-than 7d",
		Short: "Delete finished jobs (completed, cancelled; dead letters only on request) older than a cutoff",
		Long: `Delete archived jobs that finished before now minus --older-than, in batches.
Dead letters and legacy failed jobs are kept unless --include-dead-letter or
--status names them. Unfinished jobs are never purged (cancel them first).
Durations: 30m, 12h, 7d, 2w, 1d12h.`,
		Example: `  v3ctl jobs purge --older-than 7d --yes
  v3ctl jobs purge --older-than 30d --include-dead-letter --dry-run`,
		Args: cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			if olderThan == "" {
				return UsageErrorf("--older-than is required, e.g. --older-than 7d")
			}
			d, err := parseAge(olderThan)
			if err != nil {
				return UsageErrorf("invalid --older-than: %v", err)
			}
			finished := []string{queue.StatusCompleted, queue.StatusCancelled, queue.StatusDeadLetter, queue.StatusFailed}
			for _, s := range statuses {
				if err := oneOf("status", s, finished); err != nil {
					return err
				}
			}
			if len(statuses) == 0 {
				statuses = []string{queue.StatusCompleted, queue.StatusCancelled}
			}
			if includeDead {
				statuses = append(statuses, queue.StatusDeadLetter, queue.StatusFailed)
			}
			if !dry {
				if err := a.Confirm(fmt.Sprintf("delete %s jobs that finished more than %s ago", strings.Join(statuses, "/"), olderThan)); err != nil {
					return err
				}
			}
			var r queue.PurgeResult
			if dry {
				err = dryRunTx(c.Context(), a, func(tx pgx.Tx) error {
					var err error
					r, err = queue.Purge(c.Context(), tx, d, statuses, 1000000, a.Actor())
					return sqlErr(err)
				})
			} else {
				var pool db.DB
				pool, err = a.DB(c.Context())
				if err == nil {
					r, err = queue.Purge(c.Context(), pool, d, statuses, 10000, a.Actor())
					err = sqlErr(err)
				}
			}
			if err != nil {
				return err
			}
			type out struct {
				queue.PurgeResult
				DryRun bool `json:"dry_run" yaml:"dry_run"`
			}
			p := a.Printer()
			if p.Structured() {
				rows := [][]string{}
				for k, v := range r.ByStatus {
					rows = append(rows, []string{k, strconv.Itoa(v)})
				}
				return p.Print(out{r, dry}, []string{"STATUS", "PURGED"}, rows)
			}
			verb := "purged"
			if dry {
				verb = "dry run: would purge"
			}
			fmt.Fprintf(a.Out, "%s %d job(s) finished before %s\n", verb, r.Purged, fmtTime(&r.Cutoff))
			return nil
		},
	}
	cmd.Flags().StringVar(&olderThan, "older-than", "", "finished more than this long ago (30m, 12h, 7d, 2w)")
	cmd.Flags().StringSliceVar(&statuses, "status", nil, "statuses to purge (default completed,cancelled)")
	cmd.Flags().BoolVar(&includeDead, "include-dead-letter", false, "also purge dead letters (and legacy failed jobs)")
	addDryRun(cmd, &dry)
	return cmd
}

func newJobsReclaimCmd(a *App) *cobra.Command {
	var limit int
	var dry bool
	cmd := &cobra.Command{
		Use:   "reclaim",
		Short: "Return jobs whose worker stopped heartbeating to pending (or dead letter); for cron",
		Long: `Reclaim processing jobs that have had no heartbeat for worker.timeout_seconds:
they go back to pending after a random delay of up to
worker.reclaim_jitter_max_seconds, counting the lost attempt, or to dead letter
when that was their last attempt. Safe to run from several places at once
(cron, workers, people): a job is reclaimed by exactly one caller.

Never prompts. Prints one summary line (or -o json).

Exit codes:
  0  ok (also when nothing needed reclaiming)
  1  error
  9  the database cannot be reached`,
		Example: `  v3ctl jobs reclaim
  v3ctl jobs reclaim -o json
  */5 * * * *  v3ctl --context prod jobs reclaim >>/var/log/v3ctl-reclaim.log 2>&1`,
		Args: cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			if limit < 1 || limit > 100000 {
				return UsageErrorf("invalid --limit %d: 1 to 100000", limit)
			}
			total := queue.ReclaimResult{JobIDs: []string{}}
			add := func(r queue.ReclaimResult) {
				total.Reclaimed += r.Reclaimed
				total.DeadLettered += r.DeadLettered
				total.TimeoutSeconds = r.TimeoutSeconds
				total.JobIDs = append(total.JobIDs, r.JobIDs...)
			}
			if dry {
				err := dryRunTx(c.Context(), a, func(tx pgx.Tx) error {
					r, err := queue.Reclaim(c.Context(), tx, 100000)
					add(r)
					return sqlErr(err)
				})
				if err != nil {
					return err
				}
			} else {
				pool, err := a.DB(c.Context())
				if err != nil {
					return err
				}
				for {
					r, err := queue.Reclaim(c.Context(), pool, limit)
					if err != nil {
						return sqlErr(err)
					}
					add(r)
					if r.Reclaimed+r.DeadLettered < limit {
						break
					}
				}
			}
			type out struct {
				queue.ReclaimResult
				DryRun bool `json:"dry_run" yaml:"dry_run"`
			}
			p := a.Printer()
			if p.Structured() {
				return p.Print(out{total, dry}, []string{"RECLAIMED", "DEAD LETTERED", "TIMEOUT SECONDS", "DRY RUN"},
					[][]string{{strconv.Itoa(total.Reclaimed), strconv.Itoa(total.DeadLettered), strconv.Itoa(total.TimeoutSeconds), strconv.FormatBool(dry)}})
			}
			prefix := ""
			if dry {
				prefix = "dry run: would have "
			}
			fmt.Fprintf(a.Out, "%s%sreclaimed %d job(s), %d dead-lettered (timeout %ds)\n",
				time.Now().UTC().Format(time.RFC3339)+" ", prefix, total.Reclaimed, total.DeadLettered, total.TimeoutSeconds)
			return nil
		},
	}
	cmd.Flags().IntVar(&limit, "limit", 1000, "jobs per transaction (loops until none is left)")
	addDryRun(cmd, &dry)
	return cmd
}

func newJobsWatchCmd(a *App) *cobra.Command {
	var interval time.Duration
	var count int
	var window string
	cmd := &cobra.Command{
		Use:   "watch",
		Short: "Refresh queue stats until interrupted (on a terminal)",
		Long: `Show jobs stats and refresh them every --interval on a terminal. Without a
terminal it prints the stats once, or every --interval when --interval or
--count is given (--count N stops after N prints).`,
		Example: `  v3ctl jobs watch
  v3ctl jobs watch --interval 10s
  v3ctl jobs watch --interval 1m --count 60 -o json >> stats.jsonl`,
		Args: cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			if interval < 100*time.Millisecond {
				return UsageErrorf("invalid --interval %s: at least 100ms", interval)
			}
			if count < 0 {
				return UsageErrorf("invalid --count %d", count)
			}
			w, err := parseAge(window)
			if err != nil || w <= 0 {
				return UsageErrorf("invalid --window %q: a positive duration such as 24h", window)
			}
			repeat := a.OutTTY || c.Flags().Changed("interval") || c.Flags().Changed("count")
			if !repeat {
				count = 1
			}
			pool, err := a.DB(c.Context())
			if err != nil {
				return err
			}
			for i := 0; count == 0 || i < count; i++ {
				if i > 0 {
					select {
					case <-c.Context().Done():
						return nil
					case <-time.After(interval):
					}
				}
				s, err := queue.GetStats(c.Context(), pool, w)
				if err != nil {
					if c.Context().Err() != nil {
						return nil
					}
					return sqlErr(err)
				}
				if a.OutTTY && !a.Printer().Structured() {
					fmt.Fprint(a.Out, "\x1b[H\x1b[2J")
					fmt.Fprintf(a.Out, "v3ctl jobs watch — every %s, Ctrl-C to stop\n\n", interval)
				}
				if err := printStats(a, s); err != nil {
					return err
				}
			}
			return nil
		},
	}
	cmd.Flags().DurationVar(&interval, "interval", 2*time.Second, "refresh interval")
	cmd.Flags().IntVar(&count, "count", 0, "stop after this many refreshes (0: until interrupted)")
	cmd.Flags().StringVar(&window, "window", "24h", "count finished jobs of this period")
	return cmd
}
