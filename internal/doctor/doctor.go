// Package doctor checks a live V3 database (a dev database, a test database
// or Supabase) for problems an operator should know about: schema version,
// row level security, function privileges against the security rules, policy
// performance, stuck and dead-letter jobs, capacity held past its lease,
// usage drift, queue bloat and the connection mode. Every check is read-only
// (it runs in a READ ONLY transaction) and skips itself when the objects it
// needs belong to a migration that is not applied.
package doctor

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"net/url"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/v3ctl/v3ctl/internal/db"
	"github.com/v3ctl/v3ctl/internal/security"
	"github.com/v3ctl/v3ctl/migrations"
)

// Severity of a finding.
type Severity string

// Severities, in increasing order.
const (
	OK       Severity = "ok"
	Warn     Severity = "warn"
	Critical Severity = "critical"
)

func (s Severity) rank() int {
	switch s {
	case Critical:
		return 2
	case Warn:
		return 1
	}
	return 0
}

// Finding is one result of a check. A clean check reports one ok finding.
type Finding struct {
	Check    string   `json:"check" yaml:"check"`
	Severity Severity `json:"severity" yaml:"severity"`
	Message  string   `json:"message" yaml:"message"`
	Hint     string   `json:"hint,omitempty" yaml:"hint,omitempty"`
}

// Options tune the checks. Zero values take the defaults.
type Options struct {
	// URL of the database, for the connection-mode check ("" skips it).
	URL string
	// DeadTuplesWarn: warn when job_queue has more dead tuples than this and
	// than DeadTupleRatio of its live tuples (default 10000, 0.2).
	DeadTuplesWarn int64
	DeadTupleRatio float64
	// OpenTxWarn / OpenTxCritical: age of the oldest open transaction in this
	// database (default 5 min / 1 h).
	OpenTxWarn, OpenTxCritical time.Duration
	// DeadLetterWindow: dead letters younger than this are reported
	// (default 24h; negative: every dead letter, however old).
	DeadLetterWindow time.Duration
	// Versions are the migrations this binary knows (default: embedded).
	Versions []int64
	// Only runs just the named checks.
	Only []string
}

func (o *Options) defaults() {
	if o.DeadTuplesWarn == 0 {
		o.DeadTuplesWarn = 10000
	}
	if o.DeadTupleRatio == 0 {
		o.DeadTupleRatio = 0.2
	}
	if o.OpenTxWarn == 0 {
		o.OpenTxWarn = 5 * time.Minute
	}
	if o.OpenTxCritical == 0 {
		o.OpenTxCritical = time.Hour
	}
	if o.DeadLetterWindow == 0 {
		o.DeadLetterWindow = 24 * time.Hour
	}
	if o.Versions == nil {
		o.Versions = EmbeddedVersions()
	}
}

// EmbeddedVersions are the migration versions compiled into the binary.
func EmbeddedVersions() []int64 {
	files, _ := fs.Glob(migrations.FS, "*.sql")
	var out []int64
	for _, f := range files {
		var n int64
		if _, err := fmt.Sscanf(f, "%d_", &n); err == nil {
			out = append(out, n)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i] < out[j] })
	return out
}

// Check is one named check.
type Check struct {
	Name        string
	Description string
	// NeedsDB is false for checks that only look at Options.
	NeedsDB bool
	run     func(ctx context.Context, q db.DB, o *Options) ([]Finding, error)
}

// Checks lists every check in the order they run.
func Checks() []Check {
	return []Check{
		{"schema_version", "schema version in the database vs the newest migration in this binary", true, checkSchemaVersion},
		{"pending_migrations", "migrations this binary has that the database lacks", true, checkPending},
		{"rls_disabled", "public tables without row level security", true, checkRLS},
		{"table_privileges", "table privileges of anon/authenticated beyond the security rules", true, checkTablePrivileges},
		{"definer_search_path", "SECURITY DEFINER functions without search_path = ''", true, checkSearchPath},
		{"function_privileges", "functions executable by anon/authenticated that the security rules do not allow", true, checkFunctionPrivileges},
		{"policy_per_row_auth", "policies calling auth.uid()/auth.jwt()/auth.role() per row instead of (select ...)", true, checkPolicyInitPlan},
		{"policy_indexes", "columns used by policies without an index", true, checkPolicyIndexes},
		{"claim_indexes", "job_queue indexes for claiming (pending by schedule) and reclaiming (partial index on processing jobs)", true, checkClaimIndexes},
		{"stuck_jobs", "processing jobs whose heartbeat is older than worker.timeout_seconds", true, checkStuckJobs},
		{"dead_letter_jobs", "jobs dead-lettered recently (--dead-letter-window, default 24h)", true, checkDeadLetter},
		{"capacity_leases", "vendor capacity held past its lease", true, checkCapacityLeases},
		{"usage_drift", "usage aggregates that differ from the events", true, checkUsageDrift},
		{"queue_bloat", "dead tuples in job_queue", true, checkQueueBloat},
		{"open_transactions", "the oldest open transaction (holds back vacuum, blocks migrations)", true, checkOpenTransactions},
		{"pooler_url", "a transaction-mode pooler URL (Supabase port 6543, pgbouncer=true)", false, checkPoolerURL},
	}
}

// CheckNames lists the names of every check.
func CheckNames() []string {
	var out []string
	for _, c := range Checks() {
		out = append(out, c.Name)
	}
	return out
}

// Run runs the checks against the database. Each check runs in its own READ
// ONLY transaction with short timeouts; a check that errors reports a warning
// naming the error instead of stopping the others.
func Run(ctx context.Context, conn db.TxBeginner, o Options) []Finding {
	o.defaults()
	only := map[string]bool{}
	for _, n := range o.Only {
		only[n] = true
	}
	var out []Finding
	for _, c := range Checks() {
		if len(only) > 0 && !only[c.Name] {
			continue
		}
		var fs []Finding
		var err error
		if !c.NeedsDB {
			fs, err = c.run(ctx, nil, &o)
		} else {
			fs, err = runReadOnly(ctx, conn, func(tx pgx.Tx) ([]Finding, error) { return c.run(ctx, tx, &o) })
		}
		if err != nil {
			fs = []Finding{{Severity: Warn, Message: "check failed: " + db.Explain(err).Error(),
				Hint: "run as the schema owner or service role; the check could not complete"}}
		}
		if len(fs) == 0 {
			fs = []Finding{{Severity: OK, Message: "ok"}}
		}
		for i := range fs {
			fs[i].Check = c.Name
		}
		out = append(out, fs...)
	}
	return out
}

func runReadOnly(ctx context.Context, conn db.TxBeginner, fn func(pgx.Tx) ([]Finding, error)) ([]Finding, error) {
	tx, err := conn.Begin(ctx)
	if err != nil {
		return nil, err
	}
	defer func() { _ = tx.Rollback(ctx) }()
	for _, s := range []string{`SET TRANSACTION READ ONLY`, `SET LOCAL statement_timeout = '30s'`, `SET LOCAL lock_timeout = '2s'`} {
		if _, err := tx.Exec(ctx, s); err != nil {
			return nil, err
		}
	}
	return fn(tx)
}

// Worst is the highest severity among findings.
func Worst(fs []Finding) Severity {
	w := OK
	for _, f := range fs {
		if f.Severity.rank() > w.rank() {
			w = f.Severity
		}
	}
	return w
}

// ---------------------------------------------------------------------------
// helpers

func regclassExists(ctx context.Context, q db.DB, name string) (bool, error) {
	var ok bool
	err := q.QueryRow(ctx, `SELECT pg_catalog.to_regclass($1) IS NOT NULL`, name).Scan(&ok)
	return ok, err
}

func columnsExist(ctx context.Context, q db.DB, table string, cols ...string) (bool, error) {
	var n int
	err := q.QueryRow(ctx, `SELECT count(*) FROM pg_catalog.pg_attribute
		WHERE attrelid = pg_catalog.to_regclass($1) AND attname = ANY($2) AND NOT attisdropped`, table, cols).Scan(&n)
	return n == len(cols), err
}

func skipped(why string) []Finding {
	return []Finding{{Severity: OK, Message: "skipped: " + why}}
}

func plural(n int64, one, many string) string {
	if n == 1 {
		return "1 " + one
	}
	return strconv.FormatInt(n, 10) + " " + many
}

// ---------------------------------------------------------------------------
// schema

func checkSchemaVersion(ctx context.Context, q db.DB, o *Options) ([]Finding, error) {
	latest := int64(0)
	if n := len(o.Versions); n > 0 {
		latest = o.Versions[n-1]
	}
	ok, err := regclassExists(ctx, q, "v3ctl.schema_migrations")
	if err != nil {
		return nil, err
	}
	if !ok {
		return []Finding{{Severity: Critical, Message: fmt.Sprintf("no V3 schema: v3ctl.schema_migrations does not exist (this binary has migrations up to %d)", latest),
			Hint: "apply the schema: v3ctl migrate up"}}, nil
	}
	current, err := security.AppliedVersion(ctx, q)
	if err != nil {
		return nil, err
	}
	switch {
	case current == 0:
		return []Finding{{Severity: Critical, Message: fmt.Sprintf("no migration applied (this binary has up to %d)", latest), Hint: "v3ctl migrate up"}}, nil
	case current > latest:
		return []Finding{{Severity: Warn, Message: fmt.Sprintf("database schema is at %d, newer than this binary (%d)", current, latest),
			Hint: "upgrade v3ctl before changing the schema; this binary does not know the newer migrations"}}, nil
	case current < latest:
		return []Finding{{Severity: Warn, Message: fmt.Sprintf("database schema is at %d, this binary has up to %d", current, latest), Hint: "v3ctl migrate up"}}, nil
	}
	return []Finding{{Severity: OK, Message: fmt.Sprintf("schema at version %d, same as this binary", current)}}, nil
}

func checkPending(ctx context.Context, q db.DB, o *Options) ([]Finding, error) {
	ok, err := regclassExists(ctx, q, "v3ctl.schema_migrations")
	if err != nil {
		return nil, err
	}
	applied := map[int64]bool{}
	if ok {
		rows, err := q.Query(ctx, `SELECT DISTINCT version_id FROM v3ctl.schema_migrations WHERE is_applied AND version_id > 0`)
		if err != nil {
			return nil, err
		}
		vs, err := pgx.CollectRows(rows, pgx.RowTo[int64])
		if err != nil {
			return nil, err
		}
		for _, v := range vs {
			applied[v] = true
		}
	}
	var pending []string
	for _, v := range o.Versions {
		if !applied[v] {
			pending = append(pending, fmt.Sprintf("%05d", v))
		}
	}
	if len(pending) > 0 {
		return []Finding{{Severity: Warn, Message: fmt.Sprintf("%d migration(s) pending: %s", len(pending), strings.Join(pending, ", ")),
			Hint: "v3ctl migrate up (see them first with v3ctl migrate up --dry-run)"}}, nil
	}
	return []Finding{{Severity: OK, Message: "no migration pending"}}, nil
}

// ---------------------------------------------------------------------------
// access

func checkRLS(ctx context.Context, q db.DB, _ *Options) ([]Finding, error) {
	rels, err := security.Relations(ctx, q, "public")
	if err != nil {
		return nil, err
	}
	var out []Finding
	for _, r := range rels {
		if r.IsTable() && !r.RLS {
			out = append(out, Finding{Severity: Critical, Message: fmt.Sprintf("%s has row level security disabled", r.Name),
				Hint: fmt.Sprintf("ALTER TABLE %s ENABLE ROW LEVEL SECURITY; (PostgREST exposes public tables to every signed-in user)", r.Name)})
		}
	}
	if len(out) == 0 {
		return []Finding{{Severity: OK, Message: "every public table has row level security enabled"}}, nil
	}
	return out, nil
}

func checkTablePrivileges(ctx context.Context, q db.DB, _ *Options) ([]Finding, error) {
	rules, err := security.Load()
	if err != nil {
		return nil, err
	}
	roles, err := security.ExistingRoles(ctx, q)
	if err != nil {
		return nil, err
	}
	rels, err := security.Relations(ctx, q, "public")
	if err != nil {
		return nil, err
	}
	var out []Finding
	for _, r := range rels {
		rule, _, hasRule := rules.Table(r.Name)
		for _, role := range []string{"anon", "authenticated"} {
			if !roles[role] {
				continue
			}
			privs, err := security.TablePrivileges(ctx, q, role, r.OID, r.Kind)
			if err != nil {
				return nil, err
			}
			var extra []string
			sev := Warn
			for _, p := range privs {
				base := p
				if i := strings.IndexByte(p, '('); i >= 0 {
					base = p[:i]
				}
				switch {
				case base == "TRUNCATE":
					// TRUNCATE ignores row level security.
					extra, sev = append(extra, p), Critical
				case r.Kind == "S":
					extra = append(extra, p)
				case hasRule && !rule.For(role).Has(base):
					extra, sev = append(extra, p), Critical
				case !hasRule:
					extra = append(extra, p)
				}
			}
			if len(extra) == 0 {
				continue
			}
			what := "the security rules allow none of them"
			if !hasRule {
				what = "the table has no security rule (v3ctl does not know it)"
			}
			out = append(out, Finding{Severity: sev,
				Message: fmt.Sprintf("%s holds %s on %s; %s", role, strings.Join(extra, ", "), r.Name, what),
				Hint:    fmt.Sprintf("REVOKE ALL ON %s FROM %s; then grant back only what a browser needs", r.Name, role)})
		}
	}
	if len(out) == 0 {
		return []Finding{{Severity: OK, Message: "anon and authenticated hold only the table privileges the rules allow"}}, nil
	}
	return out, nil
}

func checkSearchPath(ctx context.Context, q db.DB, _ *Options) ([]Finding, error) {
	fns, err := security.Functions(ctx, q, []string{"public"})
	if err != nil {
		return nil, err
	}
	var out []Finding
	for _, f := range fns {
		if !f.Definer || f.EmptySearchPath() {
			continue
		}
		sp, set := f.SearchPath()
		if !set {
			out = append(out, Finding{Severity: Critical, Message: fmt.Sprintf("SECURITY DEFINER %s has no fixed search_path", f.Signature),
				Hint: fmt.Sprintf("ALTER FUNCTION %s SET search_path = ''; and qualify every name in its body", f.Signature)})
			continue
		}
		out = append(out, Finding{Severity: Warn, Message: fmt.Sprintf("SECURITY DEFINER %s has search_path=%s, not empty", f.Signature, sp),
			Hint: fmt.Sprintf("ALTER FUNCTION %s SET search_path = ''; and qualify every name in its body", f.Signature)})
	}
	if len(out) == 0 {
		return []Finding{{Severity: OK, Message: "every SECURITY DEFINER function has search_path = ''"}}, nil
	}
	return out, nil
}

func checkFunctionPrivileges(ctx context.Context, q db.DB, _ *Options) ([]Finding, error) {
	rules, err := security.Load()
	if err != nil {
		return nil, err
	}
	fns, err := security.Functions(ctx, q, []string{"public"})
	if err != nil {
		return nil, err
	}
	var out []Finding
	for _, f := range fns {
		if f.Trigger {
			continue // a trigger function cannot be called directly
		}
		rule, _, hasRule := rules.Function(f.Signature)
		var bad []string
		for _, role := range []string{"anon", "authenticated"} {
			if f.Execute[role] && (!hasRule || !rule.Allows(role)) {
				bad = append(bad, role)
			}
		}
		if len(bad) == 0 {
			continue
		}
		who := strings.Join(bad, " and ")
		revoke := fmt.Sprintf("REVOKE EXECUTE ON FUNCTION %s FROM PUBLIC, %s;", f.Signature, strings.Join(bad, ", "))
		switch {
		case hasRule:
			out = append(out, Finding{Severity: Critical, Message: fmt.Sprintf("%s is executable by %s; the security rules allow only %s", f.Signature, who, orNone(rule.Execute)), Hint: revoke})
		case f.Definer:
			out = append(out, Finding{Severity: Critical, Message: fmt.Sprintf("SECURITY DEFINER %s (not a V3 function) is executable by %s", f.Signature, who), Hint: revoke})
		default:
			out = append(out, Finding{Severity: Warn, Message: fmt.Sprintf("%s (not a V3 function) is executable by %s", f.Signature, who), Hint: revoke + " if browsers do not need it"})
		}
	}
	if len(out) == 0 {
		return []Finding{{Severity: OK, Message: "anon and authenticated can execute only the functions the rules allow"}}, nil
	}
	return out, nil
}

func orNone(s []string) string {
	if len(s) == 0 {
		return "no browser role"
	}
	return strings.Join(s, ", ")
}

// ---------------------------------------------------------------------------
// policies and indexes

// countPerRowAuth counts calls of the auth helpers (and current_setting) in a
// deparsed policy expression that are not the whole of a scalar subquery
// "( SELECT auth.uid() AS uid)", i.e. that Postgres evaluates per row.
func countPerRowAuth(expr string) int {
	n := 0
	for _, fn := range []string{"auth.uid()", "auth.jwt()", "auth.role()", "auth.email()", "current_setting("} {
		rest := expr
		for {
			i := strings.Index(rest, fn)
			if i < 0 {
				break
			}
			before := strings.TrimRight(rest[:i], " ")
			if !strings.HasSuffix(strings.ToUpper(before), "SELECT") {
				n++
			}
			rest = rest[i+len(fn):]
		}
	}
	return n
}

func checkPolicyInitPlan(ctx context.Context, q db.DB, _ *Options) ([]Finding, error) {
	rows, err := q.Query(ctx, `SELECT schemaname || '.' || tablename, policyname, coalesce(qual, ''), coalesce(with_check, '')
		FROM pg_catalog.pg_policies WHERE schemaname = 'public' ORDER BY 1, 2`)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []Finding
	for rows.Next() {
		var table, name, qual, check string
		if err := rows.Scan(&table, &name, &qual, &check); err != nil {
			return nil, err
		}
		if n := countPerRowAuth(qual) + countPerRowAuth(check); n > 0 {
			out = append(out, Finding{Severity: Warn,
				Message: fmt.Sprintf("policy %s on %s calls an auth helper per row (%d call(s) not wrapped in a subquery)", name, table, n),
				Hint:    "write (SELECT auth.uid()) instead of auth.uid() so it is evaluated once per query"})
		}
	}
	if err := rows.Err(); err != nil {
		return nil, err
	}
	if len(out) == 0 {
		return []Finding{{Severity: OK, Message: "every policy evaluates auth helpers once per query"}}, nil
	}
	return out, nil
}

func checkPolicyIndexes(ctx context.Context, q db.DB, _ *Options) ([]Finding, error) {
	// Columns a policy of a public table refers to (recorded in pg_depend),
	// without a valid, non-partial index that leads with the column. Booleans
	// are exempt.
	rows, err := q.Query(ctx, `
SELECT DISTINCT n.nspname || '.' || c.relname, a.attname, string_agg(DISTINCT pol.polname, ', ')
FROM pg_catalog.pg_policy pol
JOIN pg_catalog.pg_class pc ON pc.oid = pol.polrelid
JOIN pg_catalog.pg_namespace pn ON pn.oid = pc.relnamespace AND pn.nspname = 'public'
JOIN pg_catalog.pg_depend d ON d.classid = 'pg_catalog.pg_policy'::regclass AND d.objid = pol.oid
     AND d.refclassid = 'pg_catalog.pg_class'::regclass AND d.refobjsubid > 0
JOIN pg_catalog.pg_class c ON c.oid = d.refobjid AND c.relkind IN ('r', 'p')
JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
JOIN pg_catalog.pg_attribute a ON a.attrelid = c.oid AND a.attnum = d.refobjsubid
WHERE a.atttypid <> 'pg_catalog.bool'::regtype
  AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_index i WHERE i.indrelid = c.oid AND i.indkey[0] = a.attnum
                  AND i.indpred IS NULL AND i.indisvalid)
GROUP BY 1, 2
ORDER BY 1, 2`)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []Finding
	for rows.Next() {
		var table, col, pols string
		if err := rows.Scan(&table, &col, &pols); err != nil {
			return nil, err
		}
		out = append(out, Finding{Severity: Warn,
			Message: fmt.Sprintf("%s.%s is used by policy %s but no index leads with it", table, col, pols),
			Hint:    fmt.Sprintf("CREATE INDEX ON %s (%s); otherwise every query as a user scans the table", table, col)})
	}
	if err := rows.Err(); err != nil {
		return nil, err
	}
	if len(out) == 0 {
		return []Finding{{Severity: OK, Message: "every column used by a policy is indexed"}}, nil
	}
	return out, nil
}

func checkClaimIndexes(ctx context.Context, q db.DB, _ *Options) ([]Finding, error) {
	ok, err := regclassExists(ctx, q, "public.job_queue")
	if err != nil {
		return nil, err
	}
	if !ok {
		return skipped("public.job_queue does not exist (queue migration not applied)"), nil
	}
	rows, err := q.Query(ctx, `SELECT pg_catalog.pg_get_indexdef(i.indexrelid) FROM pg_catalog.pg_index i
		WHERE i.indrelid = 'public.job_queue'::regclass AND i.indisvalid`)
	if err != nil {
		return nil, err
	}
	defs, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return nil, err
	}
	has := func(words ...string) bool {
		for _, d := range defs {
			all := true
			for _, w := range words {
				if !strings.Contains(d, w) {
					all = false
				}
			}
			if all {
				return true
			}
		}
		return false
	}
	var out []Finding
	if !has("scheduled_at") {
		out = append(out, Finding{Severity: Warn, Message: "job_queue has no index on scheduled_at for claiming pending jobs",
			Hint: "CREATE INDEX ON public.job_queue (priority, scheduled_at) WHERE status = 'pending'"})
	}
	// Reclaim and worker lookups walk the in-flight jobs through a partial
	// index on status = 'processing' (job_queue_processing_idx, on
	// worker_id). heartbeat_at is deliberately not indexed so that
	// heartbeats stay HOT updates.
	if !has("WHERE", "'processing'") {
		out = append(out, Finding{Severity: Warn, Message: "job_queue has no partial index on processing jobs for reclaiming and worker lookups",
			Hint: "CREATE INDEX job_queue_processing_idx ON public.job_queue (worker_id) WHERE status = 'processing' (not on heartbeat_at: heartbeats must stay HOT updates)"})
	}
	if len(out) == 0 {
		return []Finding{{Severity: OK, Message: "job_queue has indexes for claiming and reclaiming"}}, nil
	}
	return out, nil
}

// ---------------------------------------------------------------------------
// jobs, capacity, usage

func timeoutSeconds(ctx context.Context, q db.DB) (int64, error) {
	var v int64 = 1800
	ok, err := regclassExists(ctx, q, "public.system_configuration")
	if err != nil || !ok {
		return v, err
	}
	err = q.QueryRow(ctx, `SELECT coalesce((SELECT (config_value #>> '{}')::bigint FROM public.system_configuration
		WHERE config_key = 'worker.timeout_seconds' AND jsonb_typeof(config_value) = 'number'), 1800)`).Scan(&v)
	return v, err
}

func checkStuckJobs(ctx context.Context, q db.DB, _ *Options) ([]Finding, error) {
	ok, err := columnsExist(ctx, q, "public.job_queue", "status", "heartbeat_at")
	if err != nil {
		return nil, err
	}
	if !ok {
		return skipped("public.job_queue (with status, heartbeat_at) does not exist"), nil
	}
	timeout, err := timeoutSeconds(ctx, q)
	if err != nil {
		return nil, err
	}
	var n int64
	var oldest *time.Time
	if err := q.QueryRow(ctx, `SELECT count(*), min(coalesce(heartbeat_at, started_at, updated_at))
		FROM public.job_queue
		WHERE status = 'processing'
		  AND coalesce(heartbeat_at, started_at, updated_at) < pg_catalog.now() - pg_catalog.make_interval(secs => $1)`, timeout).Scan(&n, &oldest); err != nil {
		return nil, err
	}
	if n > 0 {
		age := ""
		if oldest != nil {
			age = fmt.Sprintf("; oldest heartbeat %s ago", time.Since(*oldest).Round(time.Second))
		}
		return []Finding{{Severity: Warn,
			Message: fmt.Sprintf("%s processing without a heartbeat for more than worker.timeout_seconds (%ds)%s", plural(n, "job is", "jobs are"), timeout, age),
			Hint:    "the reclaimer is not running or cannot keep up: run reclaim_timed_out_jobs() (v3ctl jobs reclaim) and check the workers"}}, nil
	}
	return []Finding{{Severity: OK, Message: fmt.Sprintf("no processing job older than worker.timeout_seconds (%ds)", timeout)}}, nil
}

func checkDeadLetter(ctx context.Context, q db.DB, o *Options) ([]Finding, error) {
	ok, err := columnsExist(ctx, q, "public.job_queue", "status")
	if err != nil {
		return nil, err
	}
	if !ok {
		return skipped("public.job_queue does not exist"), nil
	}
	// Finished jobs, dead letters included, move to job_queue_archive where
	// that table exists; older schemas keep them in job_queue.
	tables := []string{"public.job_queue"}
	archived, err := columnsExist(ctx, q, "public.job_queue_archive", "status")
	if err != nil {
		return nil, err
	}
	if archived {
		tables = append(tables, "public.job_queue_archive")
	}
	window := o.DeadLetterWindow
	var parts []string
	for _, t := range tables {
		cond := ""
		if window > 0 {
			// When the job was dead-lettered: dead_letter_at, else when it
			// finished, else its last change.
			var when []string
			for _, c := range []string{"dead_letter_at", "completed_at", "updated_at"} {
				has, err := columnsExist(ctx, q, t, c)
				if err != nil {
					return nil, err
				}
				if has {
					when = append(when, c)
				}
			}
			if len(when) > 0 {
				cond = ` AND coalesce(` + strings.Join(when, ", ") + `) >= pg_catalog.now() - pg_catalog.make_interval(secs => $1)`
			}
		}
		parts = append(parts, `(SELECT count(*) FROM `+t+` WHERE status IN ('dead_letter', 'failed')`+cond+`)`)
	}
	query := `SELECT ` + strings.Join(parts, " + ")
	var args []any
	if strings.Contains(query, "$1") {
		args = append(args, window.Seconds())
	}
	var n int64
	if err := q.QueryRow(ctx, query, args...).Scan(&n); err != nil {
		return nil, err
	}
	span := "ever"
	if window > 0 {
		span = "in the last " + formatWindow(window)
	}
	if n > 0 {
		return []Finding{{Severity: Warn, Message: fmt.Sprintf("%s dead-lettered %s", plural(n, "job", "jobs"), span),
			Hint: "inspect them (v3ctl jobs list --status dead_letter) and requeue the ones worth retrying (requeue_dead_letter_jobs)"}}, nil
	}
	return []Finding{{Severity: OK, Message: "no job dead-lettered " + span}}, nil
}

// formatWindow renders a window as 24h, 90m or 45s rather than 24h0m0s.
func formatWindow(d time.Duration) string {
	switch {
	case d%time.Hour == 0:
		return strconv.FormatInt(int64(d/time.Hour), 10) + "h"
	case d%time.Minute == 0:
		return strconv.FormatInt(int64(d/time.Minute), 10) + "m"
	}
	return d.String()
}

func checkCapacityLeases(ctx context.Context, q db.DB, _ *Options) ([]Finding, error) {
	ok, err := columnsExist(ctx, q, "public.api_capacity_holds", "expires_at", "job_id")
	if err != nil {
		return nil, err
	}
	if !ok {
		return skipped("public.api_capacity_holds does not exist (rate limit migration not applied)"), nil
	}
	// Holds not tied to a job end at expires_at. Job-tied holds live while the
	// job is processing under the same lease; a hold whose job finished or
	// lost its lease is held past its lease.
	jobTied := `false`
	if ok, err := columnsExist(ctx, q, "public.job_queue", "status", "lease_token"); err != nil {
		return nil, err
	} else if ok {
		if ok2, err := columnsExist(ctx, q, "public.api_capacity_holds", "lease_token"); err != nil {
			return nil, err
		} else if ok2 {
			jobTied = `h.job_id IS NOT NULL AND h.expires_at < pg_catalog.now() AND NOT EXISTS (
				SELECT 1 FROM public.job_queue j WHERE j.id = h.job_id AND j.status = 'processing'
				  AND j.lease_token IS NOT DISTINCT FROM h.lease_token)`
		}
	}
	var n int64
	var oldest *time.Time
	if err := q.QueryRow(ctx, `SELECT count(*), min(h.expires_at) FROM public.api_capacity_holds h
		WHERE (h.job_id IS NULL AND h.expires_at < pg_catalog.now()) OR (`+jobTied+`)`).Scan(&n, &oldest); err != nil {
		return nil, err
	}
	if n > 0 {
		age := ""
		if oldest != nil {
			age = fmt.Sprintf("; oldest lease ended %s ago", time.Since(*oldest).Round(time.Second))
		}
		return []Finding{{Severity: Warn,
			Message: fmt.Sprintf("%s of vendor capacity held past the lease%s", plural(n, "hold is", "holds are"), age),
			Hint:    "they are swept on the next acquire for that provider; if they persist, check for workers that die without releasing (v3ctl limits list)"}}, nil
	}
	return []Finding{{Severity: OK, Message: "no capacity held past its lease"}}, nil
}

// usageVerifiers are the function names a usage verification may have; the
// first that exists and takes no required argument is called.
var usageVerifiers = []string{"verify_usage_aggregates", "verify_usage", "usage_verify"}

func checkUsageDrift(ctx context.Context, q db.DB, _ *Options) ([]Finding, error) {
	var fn string
	var ret string
	var retset bool
	err := q.QueryRow(ctx, `SELECT p.oid::regproc::text, pg_catalog.format_type(p.prorettype, NULL), p.proretset
		FROM pg_catalog.pg_proc p JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace
		WHERE n.nspname = 'public' AND p.proname = ANY($1) AND p.pronargs - p.pronargdefaults = 0
		ORDER BY array_position($1, p.proname::text), p.pronargs LIMIT 1`, usageVerifiers).Scan(&fn, &ret, &retset)
	if errors.Is(err, pgx.ErrNoRows) {
		return skipped("no usage verification function (" + strings.Join(usageVerifiers, ", ") + ")"), nil
	}
	if err != nil {
		return nil, err
	}
	call := "public." + strings.TrimPrefix(fn, "public.")
	var drift int64
	var detail string
	switch {
	case retset:
		if err := q.QueryRow(ctx, `SELECT count(*) FROM `+call+`() x`).Scan(&drift); err != nil {
			return nil, err
		}
		detail = fmt.Sprintf("%s returned %s", call, plural(drift, "row", "rows"))
	case ret == "jsonb" || ret == "json":
		var doc map[string]any
		if err := q.QueryRow(ctx, `SELECT `+call+`()::jsonb`).Scan(&doc); err != nil {
			return nil, err
		}
		drift = jsonDrift(doc)
		detail = fmt.Sprintf("%s reports %s", call, plural(drift, "drifting aggregate", "drifting aggregates"))
	case ret == "boolean":
		var clean bool
		if err := q.QueryRow(ctx, `SELECT `+call+`()`).Scan(&clean); err != nil {
			return nil, err
		}
		if !clean {
			drift = 1
		}
		detail = fmt.Sprintf("%s returned %t", call, clean)
	default:
		if err := q.QueryRow(ctx, `SELECT (`+call+`())::bigint`).Scan(&drift); err != nil {
			return nil, err
		}
		detail = fmt.Sprintf("%s returned %d", call, drift)
	}
	if drift > 0 {
		return []Finding{{Severity: Critical, Message: "usage aggregates differ from the events: " + detail,
			Hint: "see them with v3ctl usage verify; rebuild with v3ctl usage rebuild"}}, nil
	}
	return []Finding{{Severity: OK, Message: "usage aggregates match the events (" + detail + ")"}}, nil
}

// jsonDrift reads a drift count from a verification document: "drift",
// "drift_count", "mismatches" or "differences" as a number or an array, or
// "ok": false.
func jsonDrift(doc map[string]any) int64 {
	for _, k := range []string{"drift_count", "drift", "mismatches", "differences", "rows"} {
		switch v := doc[k].(type) {
		case float64:
			return int64(v)
		case []any:
			return int64(len(v))
		case bool:
			if v {
				return 1
			}
			return 0
		}
	}
	if ok, isBool := doc["ok"].(bool); isBool && !ok {
		return 1
	}
	return 0
}

// ---------------------------------------------------------------------------
// bloat, transactions, connection

func checkQueueBloat(ctx context.Context, q db.DB, o *Options) ([]Finding, error) {
	ok, err := regclassExists(ctx, q, "public.job_queue")
	if err != nil {
		return nil, err
	}
	if !ok {
		return skipped("public.job_queue does not exist"), nil
	}
	var dead, live int64
	var vacuumed *time.Time
	if err := q.QueryRow(ctx, `SELECT coalesce(n_dead_tup, 0), coalesce(n_live_tup, 0), greatest(last_vacuum, last_autovacuum)
		FROM pg_catalog.pg_stat_user_tables WHERE relid = 'public.job_queue'::regclass`).Scan(&dead, &live, &vacuumed); err != nil {
		if errors.Is(err, pgx.ErrNoRows) {
			return []Finding{{Severity: OK, Message: "no statistics for job_queue yet"}}, nil
		}
		return nil, err
	}
	last := "never vacuumed"
	if vacuumed != nil {
		last = "last vacuum " + time.Since(*vacuumed).Round(time.Second).String() + " ago"
	}
	if dead > o.DeadTuplesWarn && float64(dead) > o.DeadTupleRatio*float64(live) {
		return []Finding{{Severity: Warn,
			Message: fmt.Sprintf("job_queue has %d dead tuples (%d live, %s)", dead, live, last),
			Hint:    "claims slow down as dead tuples pile up: check open_transactions (they stop vacuum), then VACUUM public.job_queue; consider lower autovacuum_vacuum_scale_factor for it"}}, nil
	}
	return []Finding{{Severity: OK, Message: fmt.Sprintf("job_queue: %d dead / %d live tuples (%s)", dead, live, last)}}, nil
}

func checkOpenTransactions(ctx context.Context, q db.DB, o *Options) ([]Finding, error) {
	var pid *int32
	var age *float64
	var state, app *string
	err := q.QueryRow(ctx, `SELECT pid, extract(epoch FROM pg_catalog.now() - xact_start)::float8, state, application_name
		FROM pg_catalog.pg_stat_activity
		WHERE datname = pg_catalog.current_database() AND pid <> pg_catalog.pg_backend_pid()
		  AND xact_start IS NOT NULL AND backend_type = 'client backend'
		ORDER BY xact_start LIMIT 1`).Scan(&pid, &age, &state, &app)
	if errors.Is(err, pgx.ErrNoRows) {
		return []Finding{{Severity: OK, Message: "no other open transaction"}}, nil
	}
	if err != nil {
		return nil, err
	}
	d := time.Duration(*age * float64(time.Second))
	desc := fmt.Sprintf("oldest open transaction: pid %d (%s, %s) open for %s", deref32(pid), derefS(app, "?"), derefS(state, "?"), d.Round(time.Second))
	hint := fmt.Sprintf("a long transaction holds back vacuum of job_queue and blocks migrations; find it: SELECT * FROM pg_stat_activity WHERE pid = %d; end it: SELECT pg_terminate_backend(%d)", deref32(pid), deref32(pid))
	switch {
	case d >= o.OpenTxCritical:
		return []Finding{{Severity: Critical, Message: desc, Hint: hint}}, nil
	case d >= o.OpenTxWarn:
		return []Finding{{Severity: Warn, Message: desc, Hint: hint}}, nil
	}
	return []Finding{{Severity: OK, Message: desc}}, nil
}

func deref32(p *int32) int32 {
	if p == nil {
		return 0
	}
	return *p
}

func derefS(p *string, def string) string {
	if p == nil || *p == "" {
		return def
	}
	return *p
}

// PoolerMode reports whether a database URL points at a transaction-mode
// pooler: port 6543 (Supabase's transaction mode), or pgbouncer=true.
func PoolerMode(dsn string) (bool, string) {
	if dsn == "" {
		return false, ""
	}
	var host, port string
	var query url.Values
	if strings.HasPrefix(dsn, "postgres://") || strings.HasPrefix(dsn, "postgresql://") {
		u, err := url.Parse(dsn)
		if err != nil {
			return false, ""
		}
		host, port, query = u.Hostname(), u.Port(), u.Query()
	} else {
		query = url.Values{}
		for _, f := range strings.Fields(dsn) {
			k, v, ok := strings.Cut(f, "=")
			if !ok {
				continue
			}
			v = strings.Trim(v, "'")
			switch k {
			case "host":
				host = v
			case "port":
				port = v
			default:
				query.Set(k, v)
			}
		}
	}
	if strings.EqualFold(query.Get("pgbouncer"), "true") {
		return true, "the URL has pgbouncer=true"
	}
	if port == "6543" {
		if strings.Contains(host, "pooler.supabase.com") {
			return true, "port 6543 on the Supabase pooler (" + host + ") is transaction mode"
		}
		return true, "port 6543 is the transaction-mode pooler port"
	}
	return false, ""
}

func checkPoolerURL(_ context.Context, _ db.DB, o *Options) ([]Finding, error) {
	if o.URL == "" {
		return skipped("no URL given"), nil
	}
	if tx, why := PoolerMode(o.URL); tx {
		return []Finding{{Severity: Warn,
			Message: "the database URL is a transaction-mode pooler: " + why,
			Hint:    "migrations (advisory locks), LISTEN/NOTIFY wake-ups and prepared statements need a session: use the direct connection or the session-mode pooler (port 5432)"}}, nil
	}
	return []Finding{{Severity: OK, Message: "the URL is a direct or session-mode connection"}}, nil
}
