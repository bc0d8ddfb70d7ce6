package usage_test

import (
	"encoding/json"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/v3ctl/v3ctl/internal/queue"
	"github.com/v3ctl/v3ctl/internal/testdb"
	"github.com/v3ctl/v3ctl/internal/usage"
)

// 50 goroutines x 200 uploads for one account (two profiles), every tenth
// upload retried by another goroutine: totals are exact, nothing counts
// twice, each limit_hit threshold is recorded exactly once, and the
// aggregates agree with the ledger.
func TestConcurrentUploadsExactTotals(t *testing.T) {
	t.Parallel()
	pool := testdb.New(t)
	account, self := newAccount(t, pool, "family@example.com")
	child := addProfile(t, pool, account, "child")
	const workers, per = 50, 200
	if testing.Short() {
		t.Log("-short: 10 x 50 uploads")
	}
	w, n := workers, per
	if testing.Short() {
		w, n = 10, 50
	}
	type upload struct {
		profile, file string
		bytes         int64
		pages         int
	}
	jobs := make([][]upload, w)
	var wantBytes, wantPages int64
	for g := 0; g < w; g++ {
		profile := self
		if g%2 == 1 {
			profile = child
		}
		size := int64(1000 + g)
		for i, id := range newFiles(t, pool, profile, n, size) {
			u := upload{profile: profile, file: id, bytes: size, pages: (g + i) % 7}
			jobs[g] = append(jobs[g], u)
			wantBytes += u.bytes
			wantPages += int64(u.pages)
		}
	}
	var (
		wg         sync.WaitGroup
		mu         sync.Mutex
		recorded   int
		duplicates int
		errs       []error
	)
	for g := 0; g < w; g++ {
		wg.Add(1)
		go func(g int) {
			defer wg.Done()
			other := jobs[(g+1)%w]
			for i, u := range jobs[g] {
				todo := []upload{u}
				if i%10 == 0 {
					todo = append(todo, other[i]) // a retry of another goroutine's upload
				}
				for _, x := range todo {
					r, err := usage.TrackUpload(ctx, pool, x.profile, x.file, x.bytes, x.pages, time.Time{})
					mu.Lock()
					switch {
					case err != nil:
						errs = append(errs, err)
					case r.Duplicate:
						duplicates++
					case r.Recorded:
						recorded++
					}
					mu.Unlock()
				}
			}
		}(g)
	}
	wg.Wait()
	if len(errs) > 0 {
		t.Fatalf("%d errors, first: %v", len(errs), errs[0])
	}
	total := w * n
	if recorded != total || duplicates != total/10 {
		t.Fatalf("recorded %d (want %d), duplicates %d (want %d)", recorded, total, duplicates, total/10)
	}
	st, err := usage.AccountStatus(ctx, pool, account, nil)
	if err != nil {
		t.Fatal(err)
	}
	if st.Usage.ShellFiles.Used != int64(total) || st.Usage.Pages.Used != wantPages {
		t.Fatalf("status files %d pages %d, want %d %d", st.Usage.ShellFiles.Used, st.Usage.Pages.Used, total, wantPages)
	}
	var files, pages, bytes, storage int64
	if err := pool.QueryRow(ctx, `SELECT sum(shell_files), sum(pages), sum(bytes_uploaded),
		(SELECT sum(storage_bytes) FROM public.usage_storage WHERE account_id = $1::uuid)
		FROM public.usage_monthly WHERE account_id = $1::uuid`, account).Scan(&files, &pages, &bytes, &storage); err != nil {
		t.Fatal(err)
	}
	if files != int64(total) || pages != wantPages || bytes != wantBytes || storage != wantBytes {
		t.Fatalf("aggregates files %d pages %d bytes %d storage %d; want %d %d %d %d", files, pages, bytes, storage, total, wantPages, wantBytes, wantBytes)
	}
	if got := count(t, pool, `SELECT count(*) FROM public.usage_events WHERE event_type = 'shell_file_uploaded'`); got != int64(total) {
		t.Fatalf("%d upload events, want %d", got, total)
	}
	// Free plan: 10 files and 100 pages are passed long ago; each threshold once.
	rows, err := pool.Query(ctx, `SELECT metadata->>'metric' || ':' || (metadata->>'threshold'), count(*)
		FROM public.usage_events WHERE event_type = 'limit_hit' GROUP BY 1 ORDER BY 1`)
	if err != nil {
		t.Fatal(err)
	}
	hits := map[string]int64{}
	for rows.Next() {
		var k string
		var c int64
		if err := rows.Scan(&k, &c); err != nil {
			t.Fatal(err)
		}
		hits[k] = c
	}
	for _, k := range []string{"shell_files:80", "shell_files:100", "pages:80", "pages:100"} {
		if hits[k] != 1 {
			t.Errorf("limit_hit %s recorded %d times, want once (all: %v)", k, hits[k], hits)
		}
	}
	if drift, err := usage.Verify(ctx, pool, time.Time{}); err != nil || len(drift) != 0 {
		t.Fatalf("verify: %v %v", drift, err)
	}
}

// Retrying an upload or an AI job, sequentially or concurrently, counts once.
func TestRetriesCountOnce(t *testing.T) {
	t.Parallel()
	pool := testdb.New(t)
	account, self := newAccount(t, pool, "retry@example.com")
	file := newFile(t, pool, self, 4096)
	var wg sync.WaitGroup
	results := make([]usage.TrackResult, 12)
	errs := make([]error, 12)
	for i := range results {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			results[i], errs[i] = usage.TrackUpload(ctx, pool, self, file, 4096, 3, time.Time{})
		}(i)
	}
	wg.Wait()
	fresh := 0
	for i, r := range results {
		if errs[i] != nil {
			t.Fatal(errs[i])
		}
		if !r.Recorded {
			t.Fatalf("result %d not recorded: %+v", i, r)
		}
		if !r.Duplicate {
			fresh++
		}
		if r.EventID != results[0].EventID {
			t.Fatalf("retries answered with different events: %d vs %d", r.EventID, results[0].EventID)
		}
	}
	if fresh != 1 {
		t.Fatalf("%d first-time recordings, want 1", fresh)
	}
	// A retry with other numbers still returns the first recording.
	r, err := usage.TrackUpload(ctx, pool, self, file, 999999, 50, time.Time{})
	if err != nil || !r.Duplicate {
		t.Fatalf("retry with other numbers: %+v %v", r, err)
	}
	job := newUUID()
	for i := 0; i < 3; i++ {
		if _, err := usage.TrackAI(ctx, pool, self, job, 1500, 7, time.Time{}); err != nil {
			t.Fatal(err)
		}
	}
	st, err := usage.AccountStatus(ctx, pool, account, nil)
	if err != nil {
		t.Fatal(err)
	}
	if st.Usage.ShellFiles.Used != 1 || st.Usage.Pages.Used != 3 || st.Usage.AITokens.Used != 1500 {
		t.Fatalf("after retries: %+v", st.Usage)
	}
	var jobs, secs int64
	if err := pool.QueryRow(ctx, `SELECT ai_jobs, ai_seconds FROM public.usage_monthly WHERE profile_id = $1::uuid`, self).Scan(&jobs, &secs); err != nil {
		t.Fatal(err)
	}
	if jobs != 1 || secs != 7 {
		t.Fatalf("ai_jobs %d ai_seconds %d, want 1 and 7", jobs, secs)
	}
}

// Usage on either side of a month boundary lands in its own period, judged
// in UTC whatever the session's time zone; none is lost.
func TestPeriodBoundary(t *testing.T) {
	t.Parallel()
	pool := testdb.New(t)
	account, self := newAccount(t, pool, "boundary@example.com")
	before := time.Date(2026, 1, 31, 23, 59, 59, 999999000, time.UTC)
	after := time.Date(2026, 2, 1, 0, 0, 0, 0, time.UTC)
	conn, err := pool.Acquire(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Release()
	// In Los Angeles both instants are still January 31st.
	if _, err := conn.Exec(ctx, `SET TimeZone = 'America/Los_Angeles'`); err != nil {
		t.Fatal(err)
	}
	defer conn.Exec(ctx, `RESET TimeZone`)
	// 1 MiB before the boundary, 2 MiB after: the level is 3 MB exactly.
	jan := newFile(t, pool, self, usage.BytesPerMB)
	feb := newFile(t, pool, self, 2*usage.BytesPerMB)
	if _, err := usage.TrackUpload(ctx, conn, self, jan, usage.BytesPerMB, 1, before); err != nil {
		t.Fatal(err)
	}
	if _, err := usage.TrackUpload(ctx, conn, self, feb, 2*usage.BytesPerMB, 2, after); err != nil {
		t.Fatal(err)
	}
	if _, err := usage.TrackAI(ctx, conn, self, newUUID(), 10, 1, before); err != nil {
		t.Fatal(err)
	}
	if _, err := usage.TrackAI(ctx, conn, self, newUUID(), 20, 1, after); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		at                   time.Time
		files, pages, tokens int64
		uploaded             int64
		start, end           string
	}{
		{before, 1, 1, 10, usage.BytesPerMB, "2026-01-01T00:00:00Z", "2026-02-01T00:00:00Z"},
		{after, 1, 2, 20, 2 * usage.BytesPerMB, "2026-02-01T00:00:00Z", "2026-03-01T00:00:00Z"},
		{time.Date(2026, 3, 15, 0, 0, 0, 0, time.UTC), 0, 0, 0, 0, "2026-03-01T00:00:00Z", "2026-04-01T00:00:00Z"},
	} {
		at := c.at
		st, err := usage.ProfileStatus(ctx, conn, self, &at)
		if err != nil {
			t.Fatal(err)
		}
		if st.Usage.ShellFiles.Used != c.files || st.Usage.Pages.Used != c.pages || st.Usage.AITokens.Used != c.tokens ||
			st.CurrentPeriod.Start != c.start || st.CurrentPeriod.End != c.end {
			t.Errorf("at %s: %+v %+v", c.at, st.CurrentPeriod, st.Usage)
		}
		// Storage is a level (both files are still stored, whatever the
		// period asked for); the bytes uploaded are a monthly flow.
		if st.Usage.Storage.UsedMB != 3 || count(t, pool, `SELECT storage_bytes FROM public.usage_storage WHERE profile_id = $1::uuid`, self) != 3*usage.BytesPerMB {
			t.Errorf("at %s: storage level %+v, want 3 MB", c.at, st.Usage.Storage)
		}
		if got := count(t, pool, `SELECT coalesce(sum(bytes_uploaded), 0) FROM public.usage_monthly
			WHERE profile_id = $1::uuid AND period_start = date_trunc('month', $2::timestamptz AT TIME ZONE 'UTC')::date`, self, c.at); got != c.uploaded {
			t.Errorf("at %s: %d bytes uploaded, want %d", c.at, got, c.uploaded)
		}
	}
	if got := count(t, pool, `SELECT count(DISTINCT period_start) FROM public.usage_monthly WHERE account_id = $1::uuid`, account); got != 2 {
		t.Fatalf("%d periods, want 2", got)
	}
}

// NULL limits mean unlimited: limit and percentage null, never over limit,
// never refused, no limit_hit.
func TestNullLimitsAreUnlimited(t *testing.T) {
	t.Parallel()
	pool := testdb.New(t)
	account, self := newAccount(t, pool, "big@example.com")
	setPlan(t, pool, account, "enterprise")
	setFlag(t, pool, "features.billing_enabled", true)
	for _, f := range newFiles(t, pool, self, 30, 50*usage.BytesPerMB) {
		if _, err := usage.TrackUpload(ctx, pool, self, f, 50*usage.BytesPerMB, 500, time.Time{}); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := usage.TrackAI(ctx, pool, self, newUUID(), 2_000_000_000, 60, time.Time{}); err != nil {
		t.Fatal(err)
	}
	st, err := usage.ProfileStatus(ctx, pool, self, nil)
	if err != nil {
		t.Fatal(err)
	}
	for name, m := range map[string]usage.Metric{"shell_files": st.Usage.ShellFiles, "pages": st.Usage.Pages, "ai_tokens": st.Usage.AITokens} {
		if m.Limit != nil || m.Percentage != nil || m.Used == 0 {
			t.Errorf("%s: %+v", name, m)
		}
	}
	if st.Usage.Storage.LimitMB != nil || st.Usage.Storage.Percentage != nil || st.Usage.Storage.UsedMB != 1500 {
		t.Errorf("storage: %+v", st.Usage.Storage)
	}
	if st.Status.OverLimit || st.Status.UpgradeRequired || st.Status.PlanType != "enterprise" {
		t.Errorf("status: %+v", st.Status)
	}
	// The raw document has JSON nulls, not zeros.
	var raw string
	if err := pool.QueryRow(ctx, `SELECT public.get_user_usage_status($1::uuid)::text`, self).Scan(&raw); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(raw, `"limit": null`) || !strings.Contains(raw, `"limit_mb": null`) {
		t.Errorf("raw status lacks null limits: %s", raw)
	}
	if n := count(t, pool, `SELECT count(*) FROM public.usage_events WHERE event_type = 'limit_hit'`); n != 0 {
		t.Errorf("%d limit_hit events on an unlimited plan", n)
	}
	rows, err := usage.Report(ctx, pool, usage.ReportParams{OverLimitOnly: true})
	if err != nil || len(rows) != 0 {
		t.Errorf("over-limit report: %v %v", rows, err)
	}
	if _, err := queue.Enqueue(ctx, pool, queue.EnqueueParams{JobType: "ai_processing", JobName: "x", Lane: "ai_queue_simple",
		Payload: json.RawMessage(`{"estimated_tokens": 1000000000}`), PatientID: self}); err != nil {
		t.Errorf("enterprise AI job refused: %v", err)
	}
}

// get_user_usage_status as the real roles: the owner and a user holding a
// share read the account totals; a stranger, a revoked share, anon and a
// token without subject are refused (42501); service_role reads anything.
func TestStatusAccessAsRoles(t *testing.T) {
	t.Parallel()
	pool := testdb.New(t)
	owner, self := newAccount(t, pool, "owner@example.com")
	child := addProfile(t, pool, owner, "child")
	shared, _ := newAccount(t, pool, "grandma@example.com")
	stranger, _ := newAccount(t, pool, "stranger@example.com")
	revoked, _ := newAccount(t, pool, "revoked@example.com")
	if _, err := pool.Exec(ctx, `INSERT INTO public.profile_access_permissions (profile_id, user_id) VALUES ($1::uuid, $2::uuid)`, child, shared); err != nil {
		t.Fatal(err)
	}
	if _, err := pool.Exec(ctx, `INSERT INTO public.profile_access_permissions (profile_id, user_id, is_active, revoked_at) VALUES ($1::uuid, $2::uuid, false, now())`, child, revoked); err != nil {
		t.Fatal(err)
	}
	for _, f := range newFiles(t, pool, self, 2, 10) {
		if _, err := usage.TrackUpload(ctx, pool, self, f, 10, 1, time.Time{}); err != nil {
			t.Fatal(err)
		}
	}
	f := newFile(t, pool, child, 10)
	if _, err := usage.TrackUpload(ctx, pool, child, f, 10, 1, time.Time{}); err != nil {
		t.Fatal(err)
	}
	eventsBefore := count(t, pool, `SELECT count(*) FROM public.usage_events`)
	cases := []struct {
		name, role, sub, profile string
		ok                       bool
	}{
		{"owner on self", "authenticated", owner, self, true},
		{"owner on dependent", "authenticated", owner, child, true},
		{"shared user on shared profile", "authenticated", shared, child, true},
		{"shared user on unshared profile", "authenticated", shared, self, false},
		{"stranger", "authenticated", stranger, child, false},
		{"revoked share", "authenticated", revoked, child, false},
		{"authenticated without subject", "authenticated", "", child, false},
		{"anon", "anon", "", child, false},
		{"service_role", "service_role", "", child, true},
	}
	for _, c := range cases {
		err := asRole(t, pool, c.role, c.sub, func(tx pgx.Tx) error {
			st, err := usage.ProfileStatus(ctx, tx, c.profile, nil)
			if err == nil && st.Usage.ShellFiles.Used != 3 {
				t.Errorf("%s: account total %d, want 3 (self + dependent)", c.name, st.Usage.ShellFiles.Used)
			}
			return err
		})
		switch {
		case c.ok && err != nil:
			t.Errorf("%s: refused: %v", c.name, err)
		case !c.ok && err == nil:
			t.Errorf("%s: allowed", c.name)
		case !c.ok && sqlState(err) != "42501":
			t.Errorf("%s: SQLSTATE %s (%v), want 42501", c.name, sqlState(err), err)
		}
	}
	if after := count(t, pool, `SELECT count(*) FROM public.usage_events`); after != eventsBefore {
		t.Fatalf("reading the status wrote %d events", after-eventsBefore)
	}
	var volatility string
	if err := pool.QueryRow(ctx, `SELECT provolatile::text FROM pg_proc WHERE oid = 'public.get_user_usage_status(uuid, timestamptz)'::regprocedure`).Scan(&volatility); err != nil || volatility != "s" {
		t.Fatalf("get_user_usage_status volatility %q (%v), want STABLE", volatility, err)
	}
}

// Users read their own aggregates and the plans, nothing else; tracking and
// admin functions are closed to them.
func TestRowLevelSecurity(t *testing.T) {
	t.Parallel()
	pool := testdb.New(t)
	alice, aliceSelf := newAccount(t, pool, "alice@example.com")
	_, bobSelf := newAccount(t, pool, "bob@example.com")
	for _, p := range []string{aliceSelf, bobSelf} {
		f := newFile(t, pool, p, 10)
		if _, err := usage.TrackUpload(ctx, pool, p, f, 10, 1, time.Time{}); err != nil {
			t.Fatal(err)
		}
	}
	err := asRole(t, pool, "authenticated", alice, func(tx pgx.Tx) error {
		if n := count(t, tx, `SELECT count(*) FROM public.usage_monthly`); n != 1 {
			t.Errorf("alice sees %d usage_monthly rows, want 1", n)
		}
		if n := count(t, tx, `SELECT count(*) FROM public.usage_storage WHERE profile_id = $1::uuid`, bobSelf); n != 0 {
			t.Errorf("alice sees bob's storage")
		}
		if n := count(t, tx, `SELECT count(*) FROM public.subscription_plans`); n != 4 {
			t.Errorf("alice sees %d plans, want 4", n)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	for _, sql := range []string{
		`SELECT count(*) FROM public.usage_events`,
		`SELECT count(*) FROM public.account_plan_history`,
		`UPDATE public.usage_monthly SET shell_files = 0`,
		`INSERT INTO public.subscription_plans (plan_key, display_name, price_cents) VALUES ('x', 'x', 0)`,
		fmt.Sprintf(`SELECT public.track_shell_file_upload_usage('%s', gen_random_uuid(), 1, 1)`, aliceSelf),
		fmt.Sprintf(`SELECT public.track_ai_processing_usage('%s', gen_random_uuid(), 1, 1)`, aliceSelf),
		fmt.Sprintf(`SELECT public.set_account_plan('%s', 'enterprise')`, alice),
		fmt.Sprintf(`SELECT public.usage_account_status('%s')`, alice),
		`SELECT public.rebuild_usage_aggregates()`,
	} {
		for _, role := range []string{"authenticated", "anon"} {
			err := asRole(t, pool, role, alice, func(tx pgx.Tx) error {
				_, err := tx.Exec(ctx, sql)
				return err
			})
			if sqlState(err) != "42501" {
				t.Errorf("%s as %s: %v, want permission denied", sql, role, err)
			}
		}
	}
	if err := asRole(t, pool, "service_role", "", func(tx pgx.Tx) error {
		f := newFile(t, pool, aliceSelf, 10)
		_, err := usage.TrackUpload(ctx, tx, aliceSelf, f, 10, 1, time.Time{})
		return err
	}); err != nil {
		t.Fatalf("service_role cannot track: %v", err)
	}
	// The ledger is append-only, even for the owner.
	if _, err := pool.Exec(ctx, `UPDATE public.usage_events SET files = 2`); sqlState(err) != "55000" {
		t.Fatalf("update of usage_events: %v", err)
	}
	if _, err := pool.Exec(ctx, `DELETE FROM public.usage_events`); sqlState(err) != "55000" {
		t.Fatalf("delete of usage_events: %v", err)
	}
}

// Billing on: an upload that would break a limit is refused with V3L01
// naming the limit, and writes nothing; billing off: recorded and flagged;
// tracking off: nothing recorded.
func TestEnforcement(t *testing.T) {
	t.Parallel()
	pool := testdb.New(t)
	account, self := newAccount(t, pool, "limits@example.com")
	child := addProfile(t, pool, account, "child")
	setFlag(t, pool, "features.billing_enabled", true)
	files := newFiles(t, pool, self, 12, 1000)
	// Ten files on the free plan, split over two profiles: they share the limit.
	for i, f := range files[:10] {
		p := self
		if i%2 == 1 {
			p = child
			if _, err := pool.Exec(ctx, `UPDATE public.shell_files SET patient_id = $1::uuid WHERE id = $2::uuid`, child, f); err != nil {
				t.Fatal(err)
			}
		}
		if _, err := usage.TrackUpload(ctx, pool, p, f, 1000, 1, time.Time{}); err != nil {
			t.Fatalf("upload %d: %v", i, err)
		}
	}
	c, err := usage.CheckUpload(ctx, pool, child, 1000, 1)
	if err != nil || c.Allowed || !c.Enforced || len(c.Exceeded) != 1 || c.Exceeded[0].Limit != "shell_files" {
		t.Fatalf("check at the limit: %+v %v", c, err)
	}
	before := count(t, pool, `SELECT count(*) FROM public.usage_events`)
	_, err = usage.TrackUpload(ctx, pool, self, files[10], 1000, 1, time.Time{})
	le, ok := usage.AsLimitError(err)
	if !ok || le.Metric != "shell_files" || !strings.Contains(le.Message, "monthly shell files limit of plan 'free'") {
		t.Fatalf("11th upload: %v", err)
	}
	if after := count(t, pool, `SELECT count(*) FROM public.usage_events`); after != before {
		t.Fatalf("a refused upload wrote %d events", after-before)
	}
	if n := count(t, pool, `SELECT count(*) FROM public.usage_storage_files WHERE shell_file_id = $1::uuid`, files[10]); n != 0 {
		t.Fatal("a refused upload was counted in storage")
	}
	// A retry of an upload already recorded is answered, not refused.
	if r, err := usage.TrackUpload(ctx, pool, self, files[0], 1000, 1, time.Time{}); err != nil || !r.Duplicate {
		t.Fatalf("retry at the limit: %+v %v", r, err)
	}

	// Pages and storage name their own limits (basic: 1000 pages, 1000 MB).
	setPlan(t, pool, account, "basic")
	big := newFile(t, pool, self, 10)
	if _, err := usage.TrackUpload(ctx, pool, self, big, 10, 991, time.Time{}); !isLimit(err, "pages") {
		t.Fatalf("991 pages over 10 used of 1000: %v", err)
	}
	huge := newFile(t, pool, self, 1000*usage.BytesPerMB)
	if _, err := usage.TrackUpload(ctx, pool, self, huge, 1000*usage.BytesPerMB, 1, time.Time{}); !isLimit(err, "storage") {
		t.Fatalf("1000 MB over 10,000 bytes stored: %v", err)
	}
	if _, err := usage.TrackUpload(ctx, pool, self, big, 10, 990, time.Time{}); err != nil {
		t.Fatalf("exactly at the page limit: %v", err)
	}

	// Billing off: recorded, flagged over the limit.
	setPlan(t, pool, account, "free")
	setFlag(t, pool, "features.billing_enabled", false)
	r, err := usage.TrackUpload(ctx, pool, self, files[11], 1000, 1, time.Time{})
	if err != nil || !r.Recorded || !r.OverLimit || len(r.OverLimits) == 0 {
		t.Fatalf("billing off: %+v %v", r, err)
	}
	st, err := usage.ProfileStatus(ctx, pool, child, nil)
	if err != nil || !st.Status.OverLimit || !st.Status.UpgradeRequired || st.Usage.ShellFiles.Used != 12 {
		t.Fatalf("status over the limit: %+v %v", st, err)
	}
	if c, err := usage.CheckUpload(ctx, pool, self, 1, 0); err != nil || !c.Allowed || c.Enforced || len(c.Exceeded) == 0 {
		t.Fatalf("check with billing off: %+v %v", c, err)
	}

	// Tracking off: nothing recorded.
	setFlag(t, pool, "features.usage_tracking_enabled", false)
	before = count(t, pool, `SELECT count(*) FROM public.usage_events`)
	extra := newFile(t, pool, self, 5)
	r, err = usage.TrackUpload(ctx, pool, self, extra, 5, 1, time.Time{})
	if err != nil || r.Recorded || r.Reason != "usage_tracking_disabled" {
		t.Fatalf("tracking off: %+v %v", r, err)
	}
	r, err = usage.TrackAI(ctx, pool, self, newUUID(), 5, 1, time.Time{})
	if err != nil || r.Recorded {
		t.Fatalf("tracking off (AI): %+v %v", r, err)
	}
	if after := count(t, pool, `SELECT count(*) FROM public.usage_events`); after != before {
		t.Fatalf("tracking off wrote %d events", after-before)
	}
}

func isLimit(err error, metric string) bool {
	le, ok := usage.AsLimitError(err)
	return ok && le.Metric == metric
}

// Billing on, many concurrent uploads against a 100-file plan: exactly 100
// are recorded, the rest refused; the limit is never exceeded.
func TestConcurrentEnforcementNeverExceeds(t *testing.T) {
	t.Parallel()
	pool := testdb.New(t)
	account, self := newAccount(t, pool, "race@example.com")
	child := addProfile(t, pool, account, "pet")
	setPlan(t, pool, account, "basic")
	setFlag(t, pool, "features.billing_enabled", true)
	const workers, per = 30, 10
	var wg sync.WaitGroup
	var mu sync.Mutex
	ok, refused := 0, 0
	var other []error
	for g := 0; g < workers; g++ {
		p := self
		if g%2 == 0 {
			p = child
		}
		files := newFiles(t, pool, p, per, 1)
		wg.Add(1)
		go func(p string, files []string) {
			defer wg.Done()
			for _, f := range files {
				_, err := usage.TrackUpload(ctx, pool, p, f, 1, 0, time.Time{})
				mu.Lock()
				switch {
				case err == nil:
					ok++
				case isLimit(err, "shell_files"):
					refused++
				default:
					other = append(other, err)
				}
				mu.Unlock()
			}
		}(p, files)
	}
	wg.Wait()
	if len(other) > 0 {
		t.Fatal(other[0])
	}
	if ok != 100 || refused != workers*per-100 {
		t.Fatalf("recorded %d refused %d; want 100 and %d", ok, refused, workers*per-100)
	}
	if n := count(t, pool, `SELECT sum(shell_files) FROM public.usage_monthly WHERE account_id = $1::uuid`, account); n != 100 {
		t.Fatalf("aggregate %d files, want 100", n)
	}
}

// The enqueue hook: with billing on, an AI job for an account at its token
// limit is refused (V3L01, nothing enqueued); other job types, billing off
// and accounts below the limit pass.
func TestEnqueueEnforcement(t *testing.T) {
	t.Parallel()
	pool := testdb.New(t)
	_, self := newAccount(t, pool, "ai@example.com")
	_, other := newAccount(t, pool, "fresh@example.com")
	if _, err := usage.TrackAI(ctx, pool, self, newUUID(), 50000, 30, time.Time{}); err != nil {
		t.Fatal(err)
	}
	enqueue := func(jobType, lane, patient, payload string) error {
		_, err := queue.Enqueue(ctx, pool, queue.EnqueueParams{JobType: jobType, JobName: "t", Lane: lane,
			Payload: json.RawMessage(payload), PatientID: patient})
		return err
	}
	if err := enqueue("ai_processing", "ai_queue_simple", self, `{"k": 1}`); err != nil {
		t.Fatalf("billing off: %v", err)
	}
	setFlag(t, pool, "features.billing_enabled", true)
	jobs := count(t, pool, `SELECT count(*) FROM public.job_queue`)
	err := enqueue("ai_processing", "ai_queue_simple", self, `{"k": 1}`)
	if !isLimit(err, "ai_tokens") || !strings.Contains(err.Error(), "AI tokens limit of plan 'free'") {
		t.Fatalf("AI job at the limit: %v", err)
	}
	// The profile in the payload is found too.
	if err := enqueue("ai_processing", "ai_queue_simple", "", fmt.Sprintf(`{"patient_id": %q}`, self)); !isLimit(err, "ai_tokens") {
		t.Fatalf("AI job with payload patient_id: %v", err)
	}
	if n := count(t, pool, `SELECT count(*) FROM public.job_queue`); n != jobs {
		t.Fatalf("a refused enqueue inserted %d jobs", n-jobs)
	}
	if err := enqueue("notification_delivery", "", self, `{"k": 1}`); err != nil {
		t.Fatalf("non-AI job refused: %v", err)
	}
	if err := enqueue("ai_processing", "ai_queue_simple", other, `{"k": 1}`); err != nil {
		t.Fatalf("account below the limit refused: %v", err)
	}
	if err := enqueue("ai_processing", "ai_queue_simple", other, `{"estimated_tokens": 50001}`); !isLimit(err, "ai_tokens") {
		t.Fatalf("estimate above the limit: %v", err)
	}
}

// limit_hit at 80 % and 100 %, once per metric per period per account.
func TestLimitHitOncePerPeriod(t *testing.T) {
	t.Parallel()
	pool := testdb.New(t)
	account, self := newAccount(t, pool, "hits@example.com")
	child := addProfile(t, pool, account, "child")
	jan := time.Date(2026, 1, 10, 0, 0, 0, 0, time.UTC)
	feb := time.Date(2026, 2, 10, 0, 0, 0, 0, time.UTC)
	var hits []string
	track := func(p string, at time.Time) {
		f := newFile(t, pool, p, 1)
		r, err := usage.TrackUpload(ctx, pool, p, f, 1, 0, at)
		if err != nil {
			t.Fatal(err)
		}
		hits = append(hits, r.LimitHits...)
	}
	for i := 0; i < 7; i++ {
		track(self, jan)
	}
	if len(hits) != 0 {
		t.Fatalf("hits below 80 %%: %v", hits)
	}
	track(child, jan) // 8 of 10
	if strings.Join(hits, ",") != "shell_files:80" {
		t.Fatalf("at 8/10: %v", hits)
	}
	track(self, jan)
	track(child, jan) // 10 of 10
	track(self, jan)  // 11
	track(self, jan)
	if strings.Join(hits, ",") != "shell_files:80,shell_files:100" {
		t.Fatalf("Jan hits: %v", hits)
	}
	for i := 0; i < 8; i++ {
		track(self, feb)
	}
	if strings.Join(hits, ",") != "shell_files:80,shell_files:100,shell_files:80" {
		t.Fatalf("Feb hits: %v", hits)
	}
	if _, err := usage.TrackAI(ctx, pool, child, newUUID(), 60000, 1, feb); err != nil {
		t.Fatal(err)
	}
	got := count(t, pool, `SELECT count(*) FROM public.usage_events WHERE event_type = 'limit_hit' AND account_id = $1::uuid`, account)
	if got != 5 { // Jan 80+100 files, Feb 80 files, Feb 80+100 tokens
		t.Fatalf("%d limit_hit events, want 5", got)
	}
}

// Storage is a level: archive and delete release bytes, un-archive counts
// them again, and the level carries across months.
func TestStorageLevel(t *testing.T) {
	t.Parallel()
	pool := testdb.New(t)
	account, self := newAccount(t, pool, "store@example.com")
	child := addProfile(t, pool, account, "child")
	a := newFile(t, pool, self, 3*usage.BytesPerMB)
	b := newFile(t, pool, self, 2*usage.BytesPerMB)
	c := newFile(t, pool, child, usage.BytesPerMB)
	dec := time.Date(2025, 12, 20, 0, 0, 0, 0, time.UTC)
	for _, x := range []struct {
		p, f string
		n    int64
	}{{self, a, 3}, {self, b, 2}, {child, c, 1}} {
		if _, err := usage.TrackUpload(ctx, pool, x.p, x.f, x.n*usage.BytesPerMB, 1, dec); err != nil {
			t.Fatal(err)
		}
	}
	level := func() float64 {
		st, err := usage.AccountStatus(ctx, pool, account, nil)
		if err != nil {
			t.Fatal(err)
		}
		return st.Usage.Storage.UsedMB
	}
	if got := level(); got != 6 {
		t.Fatalf("level %v MB, want 6 (carried from December)", got)
	}
	exec := func(sql string, args ...any) {
		if _, err := pool.Exec(ctx, sql, args...); err != nil {
			t.Fatal(err)
		}
	}
	exec(`UPDATE public.shell_files SET status = 'archived' WHERE id = $1::uuid`, a)
	exec(`UPDATE public.shell_files SET status = 'archived' WHERE id = $1::uuid`, a) // no change
	if got := level(); got != 3 {
		t.Fatalf("after archive %v MB, want 3", got)
	}
	exec(`UPDATE public.shell_files SET status = 'completed' WHERE id = $1::uuid`, a)
	if got := level(); got != 6 {
		t.Fatalf("after un-archive %v MB, want 6", got)
	}
	exec(`DELETE FROM public.shell_files WHERE id = $1::uuid`, b)
	exec(`DELETE FROM public.user_profiles WHERE id = $1::uuid`, child) // cascades to its file
	if got := level(); got != 3 {
		t.Fatalf("after deletes %v MB, want 3", got)
	}
	// Monthly flows are untouched by storage changes.
	if n := count(t, pool, `SELECT sum(bytes_uploaded) FROM public.usage_monthly WHERE account_id = $1::uuid`, account); n != 6*usage.BytesPerMB {
		t.Fatalf("bytes uploaded %d", n)
	}
	if drift, err := usage.Verify(ctx, pool, time.Time{}); err != nil || len(drift) != 0 {
		t.Fatalf("verify: %v %v", drift, err)
	}
}

// verify finds drift; rebuild (not in dry-run) repairs it from the ledger,
// optionally one month only.
func TestRebuildAndVerify(t *testing.T) {
	t.Parallel()
	pool := testdb.New(t)
	_, self := newAccount(t, pool, "drift@example.com")
	jan := time.Date(2026, 1, 5, 0, 0, 0, 0, time.UTC)
	feb := time.Date(2026, 2, 5, 0, 0, 0, 0, time.UTC)
	for _, at := range []time.Time{jan, jan, feb} {
		f := newFile(t, pool, self, 100)
		if _, err := usage.TrackUpload(ctx, pool, self, f, 100, 2, at); err != nil {
			t.Fatal(err)
		}
		if _, err := usage.TrackAI(ctx, pool, self, newUUID(), 10, 1, at); err != nil {
			t.Fatal(err)
		}
	}
	if d, err := usage.Verify(ctx, pool, time.Time{}); err != nil || len(d) != 0 {
		t.Fatalf("clean verify: %v %v", d, err)
	}
	if _, err := pool.Exec(ctx, `UPDATE public.usage_monthly SET pages = pages + 5, ai_tokens = 0;
		UPDATE public.usage_storage SET storage_bytes = 1;
		DELETE FROM public.usage_monthly WHERE period_start = '2026-02-01'`); err != nil {
		t.Fatal(err)
	}
	d, err := usage.Verify(ctx, pool, time.Time{})
	if err != nil {
		t.Fatal(err)
	}
	// Jan: pages, ai_tokens; Feb: six metrics missing; storage: one.
	if len(d) != 2+6+1 {
		t.Fatalf("drift rows %d: %+v", len(d), d)
	}
	if dj, _ := usage.Verify(ctx, pool, jan); len(dj) != 3 {
		t.Fatalf("January drift %d rows, want 3 (2 monthly + storage)", len(dj))
	}
	res, err := usage.Rebuild(ctx, pool, jan, "tester", "test", true)
	if err != nil || res.Corrected != 3 || !res.DryRun {
		t.Fatalf("dry run: %+v %v", res, err)
	}
	if d2, _ := usage.Verify(ctx, pool, time.Time{}); len(d2) != len(d) {
		t.Fatalf("dry run changed something: %d rows", len(d2))
	}
	res, err = usage.Rebuild(ctx, pool, jan, "tester", "test", false)
	if err != nil || res.Corrected != 3 || res.MonthlyRows != 1 {
		t.Fatalf("rebuild January: %+v %v", res, err)
	}
	if d2, _ := usage.Verify(ctx, pool, time.Time{}); len(d2) != 6 {
		t.Fatalf("after January rebuild %d rows left, want February's 6", len(d2))
	}
	if _, err := usage.Rebuild(ctx, pool, time.Time{}, "tester", "", false); err != nil {
		t.Fatal(err)
	}
	if d2, _ := usage.Verify(ctx, pool, time.Time{}); len(d2) != 0 {
		t.Fatalf("after full rebuild: %+v", d2)
	}
	if n := count(t, pool, `SELECT count(*) FROM public.audit_log WHERE table_name = 'usage_monthly' AND operation = 'REBUILD' AND changed_by = 'tester'`); n != 2 {
		t.Fatalf("%d rebuild audit rows, want 2 (dry run leaves none)", n)
	}
}

// Tracking validates its input and writes nothing on refusal.
func TestTrackingValidation(t *testing.T) {
	t.Parallel()
	pool := testdb.New(t)
	account, self := newAccount(t, pool, "valid@example.com")
	_, other := newAccount(t, pool, "other@example.com")
	f := newFile(t, pool, self, 10)
	for name, call := range map[string]func() error{
		"negative bytes":        func() error { _, err := usage.TrackUpload(ctx, pool, self, f, -1, 1, time.Time{}); return err },
		"negative pages":        func() error { _, err := usage.TrackUpload(ctx, pool, self, f, 1, -1, time.Time{}); return err },
		"account id as profile": func() error { _, err := usage.TrackUpload(ctx, pool, account, f, 1, 1, time.Time{}); return err },
		"file of another profile": func() error {
			_, err := usage.TrackUpload(ctx, pool, other, f, 1, 1, time.Time{})
			return err
		},
		"unknown file":    func() error { _, err := usage.TrackUpload(ctx, pool, self, newUUID(), 1, 1, time.Time{}); return err },
		"negative tokens": func() error { _, err := usage.TrackAI(ctx, pool, self, newUUID(), -5, 1, time.Time{}); return err },
	} {
		if err := call(); sqlState(err) != "22023" {
			t.Errorf("%s: %v, want 22023", name, err)
		}
	}
	if n := count(t, pool, `SELECT count(*) FROM public.usage_events`); n != 0 {
		t.Fatalf("refused calls wrote %d events", n)
	}
}
