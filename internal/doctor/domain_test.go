package doctor_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/v3ctl/v3ctl/internal/doctor"
	"github.com/v3ctl/v3ctl/internal/testdb"
)

const (
	account = "0000000a-0000-4000-8000-00000000000a"
	profile = "1000000a-0000-4000-8000-00000000000a"
)

// Problems in the queue, capacity and usage data, planted through the SQL
// API the app uses and then aged or corrupted by hand.
func TestFindsPlantedDataProblems(t *testing.T) {
	seed := []string{
		`INSERT INTO auth.users (id, email) VALUES ('` + account + `', 'a@example.test')`,
		`INSERT INTO public.user_profiles (id, account_owner_id, display_name) VALUES ('` + profile + `', '` + account + `', 'A')`,
	}
	cases := []struct {
		name  string
		needs string // a table of a later migration
		plant []string
		opts  doctor.Options
		check string
		sev   doctor.Severity
		want  string
	}{
		{name: "stuck job", needs: "public.job_queue", plant: []string{
			`SELECT * FROM public.enqueue_job_v3('audit_cleanup', 'stuck', '{"a":1}'::jsonb)`,
			`SELECT * FROM public.claim_jobs_v3('worker-1', NULL, NULL, 1)`,
			`UPDATE public.job_queue SET heartbeat_at = now() - interval '2 hours', started_at = now() - interval '2 hours'`,
		}, check: "stuck_jobs", sev: doctor.Warn, want: "1 job is processing without a heartbeat"},
		{name: "dead letter", needs: "public.job_queue", plant: []string{
			`SELECT * FROM public.enqueue_job_v3('audit_cleanup', 'doomed', '{"a":1}'::jsonb)`,
			`SELECT public.fail_job(c.id, 'worker-1', 'boom', false, c.lease_token) FROM public.claim_jobs_v3('worker-1', NULL, NULL, 1) c`,
		}, check: "dead_letter_jobs", sev: doctor.Warn, want: "1 job dead-lettered in the last 24h"},
		{name: "no processing index", needs: "public.job_queue", plant: []string{
			`DROP INDEX public.job_queue_processing_idx`,
		}, check: "claim_indexes", sev: doctor.Warn, want: "no partial index on processing jobs"},
		{name: "capacity held past its lease", needs: "public.api_capacity_holds", plant: []string{
			`SELECT public.acquire_api_capacity('openai', 'gpt-4o-mini', 100)`,
			`UPDATE public.api_capacity_holds SET acquired_at = now() - interval '2 hours', expires_at = now() - interval '1 hour'`,
		}, check: "capacity_leases", sev: doctor.Warn, want: "1 hold is of vendor capacity held past the lease"},
		{name: "usage drift", needs: "public.usage_monthly", plant: []string{
			`INSERT INTO public.shell_files (id, patient_id, filename, mime_type, file_size_bytes, storage_path)
			   VALUES ('5000000a-0000-4000-8000-00000000000a', '` + profile + `', 'f.pdf', 'application/pdf', 1000, 'p/f.pdf')`,
			`SELECT public.track_shell_file_upload_usage('` + profile + `', '5000000a-0000-4000-8000-00000000000a', 1000, 3)`,
			`UPDATE public.usage_monthly SET pages = pages + 1`,
		}, check: "usage_drift", sev: doctor.Critical, want: "differ from the events"},
		{name: "queue bloat", needs: "public.job_queue", plant: []string{
			`SELECT count(*) FROM generate_series(1, 300) i, LATERAL public.enqueue_job_v3('audit_cleanup', 'bloat', jsonb_build_object('i', i)) e`,
			`DELETE FROM public.job_queue`,
		}, opts: doctor.Options{DeadTuplesWarn: 100}, check: "queue_bloat", sev: doctor.Warn, want: "dead tuples"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			pool := testdb.New(t)
			ctx := context.Background()
			var exists bool
			if err := pool.QueryRow(ctx, `SELECT to_regclass($1) IS NOT NULL`, tc.needs).Scan(&exists); err != nil {
				t.Fatal(err)
			}
			if !exists {
				// The check must then skip, not fail.
				fs := doctor.Run(ctx, pool, doctor.Options{Only: []string{tc.check}})
				if len(fs) != 1 || fs[0].Severity != doctor.OK || !strings.HasPrefix(fs[0].Message, "skipped") {
					t.Fatalf("without %s, %s should skip:\n%s", tc.needs, tc.check, dump(fs))
				}
				return
			}
			// Clean before planting.
			o := tc.opts
			o.Only = []string{tc.check}
			if fs := doctor.Run(ctx, pool, o); doctor.Worst(fs) != doctor.OK {
				t.Fatalf("%s not clean before planting:\n%s", tc.check, dump(fs))
			}
			for _, s := range append(append([]string{}, seed...), tc.plant...) {
				if _, err := pool.Exec(ctx, s); err != nil {
					t.Fatalf("plant %q: %v", s, err)
				}
			}
			// Table statistics arrive asynchronously: wait for them, bounded.
			deadline := time.Now().Add(15 * time.Second)
			for {
				fs := doctor.Run(ctx, pool, o)
				for _, f := range fs {
					if f.Check == tc.check && f.Severity == tc.sev && strings.Contains(f.Message, tc.want) {
						return
					}
				}
				if tc.check != "queue_bloat" || time.Now().After(deadline) {
					t.Fatalf("check %s did not report %s %q:\n%s", tc.check, tc.sev, tc.want, dump(fs))
				}
				time.Sleep(200 * time.Millisecond)
			}
		})
	}
}

// A dead letter older than the window (default 24h) is history, not a
// problem: the default run stays clean, an all-time run still counts it.
func TestOldDeadLetterOutsideWindow(t *testing.T) {
	pool := testdb.New(t)
	ctx := context.Background()
	var exists bool
	if err := pool.QueryRow(ctx, `SELECT to_regclass('public.job_queue_archive') IS NOT NULL`).Scan(&exists); err != nil {
		t.Fatal(err)
	}
	if !exists {
		t.Skip("public.job_queue_archive does not exist")
	}
	for _, s := range []string{
		`SELECT * FROM public.enqueue_job_v3('audit_cleanup', 'old-doomed', '{"a":1}'::jsonb)`,
		`SELECT public.fail_job(c.id, 'worker-1', 'boom', false, c.lease_token) FROM public.claim_jobs_v3('worker-1', NULL, NULL, 1) c`,
		`UPDATE public.job_queue_archive SET dead_letter_at = now() - interval '3 days', completed_at = now() - interval '3 days'
		   WHERE status = 'dead_letter'`,
	} {
		if _, err := pool.Exec(ctx, s); err != nil {
			t.Fatalf("plant %q: %v", s, err)
		}
	}
	fs := doctor.Run(ctx, pool, doctor.Options{Only: []string{"dead_letter_jobs"}})
	if len(fs) != 1 || fs[0].Severity != doctor.OK || !strings.Contains(fs[0].Message, "in the last 24h") {
		t.Fatalf("a 3-day-old dead letter was reported with the default window:\n%s", dump(fs))
	}
	fs = doctor.Run(ctx, pool, doctor.Options{Only: []string{"dead_letter_jobs"}, DeadLetterWindow: 96 * time.Hour})
	if len(fs) != 1 || fs[0].Severity != doctor.Warn || !strings.Contains(fs[0].Message, "1 job dead-lettered in the last 96h") {
		t.Fatalf("a 4-day window should report the dead letter:\n%s", dump(fs))
	}
	fs = doctor.Run(ctx, pool, doctor.Options{Only: []string{"dead_letter_jobs"}, DeadLetterWindow: -1})
	if len(fs) != 1 || fs[0].Severity != doctor.Warn || !strings.Contains(fs[0].Message, "1 job dead-lettered ever") {
		t.Fatalf("an all-time run should report the dead letter:\n%s", dump(fs))
	}
}
