package usage_test

import (
	"os"
	"strconv"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/v3ctl/v3ctl/internal/testdb"
	"github.com/v3ctl/v3ctl/internal/usage"
)

// Scale of BenchmarkReport100kProfiles; V3CTL_BENCH_PROFILES and
// V3CTL_BENCH_EVENTS override it. Accounts are 70 % of the profiles (every
// account has its self profile, the rest are dependents); the events cover
// the last reportMonths months, the current one included.
const (
	defaultReportProfiles = 100_000
	defaultReportEvents   = 1_000_000
	reportMonths          = 6
)

func envInt(b *testing.B, name string, def int) int {
	b.Helper()
	s := os.Getenv(name)
	if s == "" {
		return def
	}
	n, err := strconv.Atoi(s)
	if err != nil || n < 10 {
		b.Fatalf("%s=%q: want an integer of at least 10", name, s)
	}
	return n
}

// reportData is what buildReportData made.
type reportData struct {
	Accounts, Profiles, Events int
	MonthlyRows, StorageRows   int64
}

// buildReportData fills an empty migrated database with set-based SQL:
// accounts (auth.users) with plans, their profiles, the usage events and
// the aggregates rebuilt from those events (rebuild_usage_aggregates), then
// ANALYZE. Ids are md5-derived, so they are random-looking but
// reproducible.
func buildReportData(b *testing.B, pool *pgxpool.Pool, profiles, events int) reportData {
	b.Helper()
	accounts := profiles * 7 / 10
	if accounts < 1 {
		accounts = 1
	}
	conn, err := pool.Acquire(ctx)
	if err != nil {
		b.Fatal(err)
	}
	defer conn.Release()
	step := func(name, sql string, args ...any) {
		b.Helper()
		start := time.Now()
		if _, err := conn.Exec(ctx, sql, args...); err != nil {
			b.Fatalf("%s: %v", name, err)
		}
		b.Logf("setup: %-28s %s", name, time.Since(start).Round(time.Millisecond))
	}
	step("session settings", `SET work_mem = '256MB'; SET maintenance_work_mem = '512MB'`)
	step("auth.users", `INSERT INTO auth.users (id, email)
SELECT md5('account:' || g)::uuid, 'bench' || g || '@example.org' FROM generate_series(1, $1::int) g`, accounts)
	// About 60 % of the accounts stay on the default (free) plan.
	step("account_plans", `INSERT INTO public.account_plans (account_id, plan_key, assigned_by)
SELECT md5('account:' || g)::uuid, CASE WHEN g % 20 = 0 THEN 'enterprise' WHEN g % 10 IN (1, 2) THEN 'premium' ELSE 'basic' END, 'bench'
FROM generate_series(1, $1::int) g WHERE g % 10 NOT IN (3, 4, 5, 6, 7, 8)`, accounts)
	// Profile p: the self profile of account p for p <= accounts, else a
	// dependent of account 1 + (p * 7919) % accounts.
	step("bench_profiles (temp)", `CREATE TEMP TABLE bench_profiles AS
SELECT p AS idx, md5('profile:' || p)::uuid AS id,
       md5('account:' || CASE WHEN p <= $2 THEN p ELSE 1 + (p::bigint * 7919) % $2 END)::uuid AS account_id,
       CASE WHEN p <= $2 THEN 'self' ELSE (ARRAY['child', 'pet', 'dependent'])[1 + p % 3] END AS profile_type
FROM generate_series(1, $1::int) p`, profiles, accounts)
	step("bench_profiles index", `CREATE UNIQUE INDEX ON bench_profiles (idx); ANALYZE bench_profiles`)
	step("user_profiles", `INSERT INTO public.user_profiles (id, account_owner_id, profile_type, display_name)
SELECT id, account_id, profile_type, 'Bench person' FROM bench_profiles ORDER BY idx`)
	// Half uploads (files, pages, bytes and the same storage), half AI
	// jobs (tokens, seconds), each for a pseudo-random profile, spread
	// evenly over the months up to now.
	step("usage_events", `WITH ev AS (
  SELECT g,
         1 + abs(hashint4(g)::bigint) % $2 AS pidx,
         date_trunc('month', now() AT TIME ZONE 'UTC') - make_interval(months => g % $3) AS month_start,
         abs(hashint4(-g)::bigint) AS h
  FROM generate_series(1, $1::int) g
), t AS (
  SELECT ev.*, (month_start + (least(month_start + interval '1 month', now() AT TIME ZONE 'UTC') - month_start)
                 * ((h % 1000000) / 1000000.0)) AT TIME ZONE 'UTC' AS at
  FROM ev
)
INSERT INTO public.usage_events (idempotency_key, event_type, account_id, profile_id, shell_file_id, job_id,
  files, pages, bytes, tokens, jobs, seconds, storage_delta_bytes, period_start, occurred_at)
SELECT 'bench:' || t.g,
       CASE WHEN t.g % 2 = 0 THEN 'shell_file_uploaded' ELSE 'ai_processing_completed' END,
       p.account_id, p.id,
       CASE WHEN t.g % 2 = 0 THEN md5('file:' || t.g)::uuid END,
       CASE WHEN t.g % 2 = 1 THEN md5('job:' || t.g)::uuid END,
       (t.g % 2 = 0)::int, CASE WHEN t.g % 2 = 0 THEN 1 + t.h % 20 ELSE 0 END,
       CASE WHEN t.g % 2 = 0 THEN 50000 + t.h % 5000000 ELSE 0 END,
       CASE WHEN t.g % 2 = 1 THEN 500 + t.h % 20000 ELSE 0 END,
       (t.g % 2 = 1)::int, CASE WHEN t.g % 2 = 1 THEN 1 + t.h % 60 ELSE 0 END,
       CASE WHEN t.g % 2 = 0 THEN 50000 + t.h % 5000000 ELSE 0 END,
       date_trunc('month', t.at AT TIME ZONE 'UTC')::date, t.at
FROM t JOIN bench_profiles p ON p.idx = t.pidx`, events, profiles, reportMonths)
	step("rebuild_usage_aggregates", `SELECT public.rebuild_usage_aggregates(NULL, 'bench', 'report benchmark data')`)
	step("vacuum analyze", `VACUUM ANALYZE auth.users, public.account_plans, public.user_profiles,
  public.usage_events, public.usage_monthly, public.usage_storage`)
	step("drop bench_profiles", `DROP TABLE bench_profiles`)

	d := reportData{Accounts: accounts, Profiles: profiles, Events: events}
	var drift bool
	if err := conn.QueryRow(ctx, `SELECT (SELECT count(*) FROM public.usage_monthly), (SELECT count(*) FROM public.usage_storage),
  (SELECT (sum(files), sum(pages), sum(bytes), sum(tokens), sum(jobs), sum(seconds)) FROM public.usage_events)
  IS DISTINCT FROM
  (SELECT (sum(shell_files), sum(pages), sum(bytes_uploaded), sum(ai_tokens), sum(ai_jobs), sum(ai_seconds)) FROM public.usage_monthly)
  OR (SELECT sum(storage_delta_bytes) FROM public.usage_events) IS DISTINCT FROM (SELECT sum(storage_bytes) FROM public.usage_storage)`).
		Scan(&d.MonthlyRows, &d.StorageRows, &drift); err != nil {
		b.Fatal(err)
	}
	if drift {
		b.Fatal("the aggregates do not add up to the events")
	}
	var n int
	if err := conn.QueryRow(ctx, `SELECT count(*) FROM public.usage_events`).Scan(&n); err != nil || n != events {
		b.Fatalf("usage_events holds %d rows, want %d (%v)", n, events, err)
	}
	return d
}

// BenchmarkReport100kProfiles times the query behind `v3ctl usage report`
// (usage.Report, all accounts, no filter) on 100k profiles in 70k accounts
// and 1M usage events over six months: for the current month (storage from
// usage_storage) and for the previous one (storage summed from the events).
// The data is built once, before the timed runs (its duration is logged).
//
//	go test -run '^$' -bench Report100kProfiles -benchtime 5x -timeout 60m -v ./internal/usage/
func BenchmarkReport100kProfiles(b *testing.B) {
	profiles := envInt(b, "V3CTL_BENCH_PROFILES", defaultReportProfiles)
	events := envInt(b, "V3CTL_BENCH_EVENTS", defaultReportEvents)
	pool := testdb.New(b)
	start := time.Now()
	d := buildReportData(b, pool, profiles, events)
	b.Logf("setup: %d accounts, %d profiles, %d events, %d usage_monthly rows, %d usage_storage rows in %s",
		d.Accounts, d.Profiles, d.Events, d.MonthlyRows, d.StorageRows, time.Since(start).Round(time.Millisecond))

	now := time.Now().UTC()
	for _, c := range []struct {
		name  string
		month time.Time
	}{
		{"month=current", now},
		{"month=previous", usage.PeriodStart(now).AddDate(0, -1, 0)},
	} {
		b.Run(c.name, func(b *testing.B) {
			var rows int
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				rs, err := usage.Report(ctx, pool, usage.ReportParams{Month: c.month})
				if err != nil {
					b.Fatal(err)
				}
				rows = len(rs)
			}
			b.StopTimer()
			if rows != d.Accounts {
				b.Fatalf("report has %d rows, want one per account (%d)", rows, d.Accounts)
			}
			b.ReportMetric(float64(rows), "rows/op")
		})
	}
}
