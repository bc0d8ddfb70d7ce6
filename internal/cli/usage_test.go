package cli

import (
	"context"
	"encoding/csv"
	"encoding/json"
	"sort"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/v3ctl/v3ctl/internal/testdb"
)

// usageFixture is a database with accounts and tracked usage:
//
//	over@example.com  free, self + child, 11 uploads (over the 10-file limit)
//	mid@example.com   free, 8 uploads (80 %)
//	big@example.com   enterprise, 30 uploads (unlimited)
type usageFixture struct {
	url                      string
	pool                     *pgxpool.Pool
	overAcct, overSelf, kid  string
	midAcct, bigAcct, bigOne string
}

func newUsageFixture(t *testing.T) *usageFixture {
	t.Helper()
	ctx := context.Background()
	f := &usageFixture{url: testdb.NewURL(t)}
	f.pool = testdb.Pool(t, f.url)
	acct := func(email string) (string, string) {
		var a, p string
		if err := f.pool.QueryRow(ctx, `WITH u AS (INSERT INTO auth.users (email) VALUES ($1) RETURNING id)
			INSERT INTO public.user_profiles (account_owner_id, display_name) SELECT id, 'Person' FROM u
			RETURNING account_owner_id::text, id::text`, email).Scan(&a, &p); err != nil {
			t.Fatal(err)
		}
		return a, p
	}
	uploads := func(profile string, n int) {
		if _, err := f.pool.Exec(ctx, `WITH f AS (
			INSERT INTO public.shell_files (patient_id, filename, mime_type, file_size_bytes, storage_path)
			SELECT $1::uuid, 'd.pdf', 'application/pdf', 1048576, 'p' FROM generate_series(1, $2) RETURNING id)
			SELECT public.track_shell_file_upload_usage($1::uuid, f.id, 1048576, 2) FROM f`, profile, n); err != nil {
			t.Fatal(err)
		}
	}
	f.overAcct, f.overSelf = acct("over@example.com")
	if err := f.pool.QueryRow(ctx, `INSERT INTO public.user_profiles (account_owner_id, profile_type, display_name)
		VALUES ($1::uuid, 'child', 'Kid') RETURNING id::text`, f.overAcct).Scan(&f.kid); err != nil {
		t.Fatal(err)
	}
	uploads(f.overSelf, 6)
	uploads(f.kid, 5)
	var mid string
	f.midAcct, mid = acct("mid@example.com")
	uploads(mid, 8)
	f.bigAcct, f.bigOne = acct("big@example.com")
	if _, err := f.pool.Exec(ctx, `SELECT public.set_account_plan($1::uuid, 'enterprise', 'fixture')`, f.bigAcct); err != nil {
		t.Fatal(err)
	}
	uploads(f.bigOne, 30)
	return f
}

func (f *usageFixture) run(t *testing.T, args ...string) (int, string, string) {
	t.Helper()
	return run(t, append([]string{"--database-url", f.url, "--actor", "ops@example.com"}, args...)...)
}

func keys(m map[string]json.RawMessage) string {
	var ks []string
	for k := range m {
		ks = append(ks, k)
	}
	sort.Strings(ks)
	return strings.Join(ks, ",")
}

// usage show -o json prints exactly the get_user_usage_status document, for
// an email, an account id or any profile of the account.
func TestUsageShow(t *testing.T) {
	t.Parallel()
	f := newUsageFixture(t)
	for _, ref := range []string{"over@example.com", f.overAcct, f.kid} {
		code, out, errs := f.run(t, "usage", "show", ref, "-o", "json")
		if code != 0 {
			t.Fatalf("show %s: exit %d: %s", ref, code, errs)
		}
		var doc map[string]json.RawMessage
		if err := json.Unmarshal([]byte(out), &doc); err != nil {
			t.Fatal(err)
		}
		if keys(doc) != "current_period,status,usage" {
			t.Fatalf("top-level keys %s", keys(doc))
		}
		var u map[string]map[string]json.RawMessage
		var st, per map[string]json.RawMessage
		_ = json.Unmarshal(doc["usage"], &u)
		_ = json.Unmarshal(doc["status"], &st)
		_ = json.Unmarshal(doc["current_period"], &per)
		if keys(per) != "end,start" || keys(st) != "over_limit,plan_type,upgrade_required" {
			t.Fatalf("period %s status %s", keys(per), keys(st))
		}
		for _, m := range []string{"shell_files", "pages", "ai_tokens"} {
			if keys(u[m]) != "limit,percentage,used" {
				t.Fatalf("%s keys %s", m, keys(u[m]))
			}
		}
		if keys(u["storage"]) != "limit_mb,percentage,used_mb" || len(u) != 4 {
			t.Fatalf("usage keys: %v", u)
		}
		if string(u["shell_files"]["used"]) != "11" || string(u["storage"]["used_mb"]) != "11" || string(st["over_limit"]) != "true" {
			t.Fatalf("values: %s", out)
		}
	}
	// The table names the plan, the status and each profile.
	code, out, _ := f.run(t, "usage", "show", "over@example.com")
	if code != 0 || !strings.Contains(out, "OVER LIMIT") || !strings.Contains(out, f.kid) || !strings.Contains(out, "110.0%") {
		t.Fatalf("table: exit %d\n%s", code, out)
	}
	code, out, _ = f.run(t, "usage", "show", "big@example.com")
	if code != 0 || !strings.Contains(out, "unlimited") || strings.Contains(out, "OVER") {
		t.Fatalf("unlimited table: exit %d\n%s", code, out)
	}
	if code, _, errs := f.run(t, "usage", "show", "nobody@example.com"); code != ExitNotFound || !strings.Contains(errs, "not found") {
		t.Fatalf("unknown account: exit %d %s", code, errs)
	}
	if code, _, _ := f.run(t, "usage", "show", "over@example.com", "--month", "11/2026"); code != ExitUsage {
		t.Fatalf("bad month: exit %d", code)
	}
}

// usage report: every account, over-limit first; --over-limit, --plan and
// csv output.
func TestUsageReport(t *testing.T) {
	t.Parallel()
	f := newUsageFixture(t)
	code, out, errs := f.run(t, "usage", "report", "-o", "json")
	if code != 0 {
		t.Fatalf("report: exit %d %s", code, errs)
	}
	var rows []struct {
		Email     string   `json:"email"`
		Plan      string   `json:"plan_type"`
		Profiles  int      `json:"profiles"`
		Files     int64    `json:"shell_files"`
		FilesPct  *float64 `json:"shell_files_pct"`
		OverLimit bool     `json:"over_limit"`
	}
	if err := json.Unmarshal([]byte(out), &rows); err != nil {
		t.Fatal(err)
	}
	if len(rows) != 3 || rows[0].Email != "over@example.com" || !rows[0].OverLimit || rows[0].Profiles != 2 || rows[0].Files != 11 ||
		rows[1].Email != "mid@example.com" || rows[2].Email != "big@example.com" || rows[2].FilesPct != nil {
		t.Fatalf("report rows: %+v", rows)
	}
	_, out, _ = f.run(t, "usage", "report", "--over-limit", "-o", "json")
	if err := json.Unmarshal([]byte(out), &rows); err != nil || len(rows) != 1 || rows[0].Email != "over@example.com" {
		t.Fatalf("--over-limit: %s", out)
	}
	_, out, _ = f.run(t, "usage", "report", "--plan", "enterprise", "-o", "json")
	if err := json.Unmarshal([]byte(out), &rows); err != nil || len(rows) != 1 || rows[0].Plan != "enterprise" {
		t.Fatalf("--plan: %s", out)
	}
	code, out, _ = f.run(t, "usage", "report", "-o", "csv")
	recs, err := csv.NewReader(strings.NewReader(out)).ReadAll()
	if code != 0 || err != nil || len(recs) != 4 || recs[0][0] != "account_id" || recs[1][1] != "over@example.com" || recs[1][len(recs[1])-1] != "true" {
		t.Fatalf("csv: exit %d %v\n%s", code, err, out)
	}
	// A past month has no flows.
	_, out, _ = f.run(t, "usage", "report", "--month", "2020-01", "--over-limit", "-o", "json")
	if strings.TrimSpace(out) != "[]" {
		t.Fatalf("2020-01 over-limit: %s", out)
	}
	if code, _, errs := f.run(t, "usage", "report", "--plan", "gold"); code != ExitUsage || !strings.Contains(errs, "enterprise") {
		t.Fatalf("unknown plan: exit %d %s", code, errs)
	}
	code, out, _ = f.run(t, "usage", "report", "--by-profile", "-o", "json")
	var bp []map[string]any
	if code != 0 || json.Unmarshal([]byte(out), &bp) != nil || len(bp) != 4 {
		t.Fatalf("--by-profile: exit %d %s", code, out)
	}
}

// verify exits 5 on drift listing each difference; rebuild --dry-run leaves
// it; rebuild repairs it.
func TestUsageVerifyAndRebuild(t *testing.T) {
	t.Parallel()
	f := newUsageFixture(t)
	if code, _, errs := f.run(t, "usage", "verify"); code != 0 || !strings.Contains(errs, "no drift") {
		t.Fatalf("clean verify: exit %d %s", code, errs)
	}
	if _, err := f.pool.Exec(context.Background(), `UPDATE public.usage_monthly SET shell_files = shell_files + 1 WHERE profile_id = $1::uuid`, f.kid); err != nil {
		t.Fatal(err)
	}
	code, out, errs := f.run(t, "usage", "verify")
	if code != ExitDrift || !strings.Contains(out, f.kid) || !strings.Contains(out, "shell_files") || !strings.Contains(errs, "1 difference") {
		t.Fatalf("drift: exit %d\n%s\n%s", code, out, errs)
	}
	if code, _, errs := f.run(t, "usage", "rebuild", "--dry-run"); code != 0 || !strings.Contains(errs, "would correct 1") {
		t.Fatalf("dry run: exit %d %s", code, errs)
	}
	if code, _, _ := f.run(t, "usage", "verify", "-o", "json"); code != ExitDrift {
		t.Fatalf("dry run repaired: exit %d", code)
	}
	if code, _, errs := f.run(t, "usage", "rebuild", "--reason", "test"); code != 0 || !strings.Contains(errs, "1 value(s) corrected") {
		t.Fatalf("rebuild: exit %d %s", code, errs)
	}
	if code, out, _ := f.run(t, "usage", "verify", "-o", "json"); code != 0 || strings.TrimSpace(out) != "[]" {
		t.Fatalf("after rebuild: exit %d %s", code, out)
	}
}

// set-plan by email or profile id: audited, recorded as plan_upgraded /
// plan_downgraded; --dry-run changes nothing.
func TestUsageSetPlan(t *testing.T) {
	t.Parallel()
	f := newUsageFixture(t)
	ctx := context.Background()
	if code, _, errs := f.run(t, "usage", "set-plan", "over@example.com", "premium", "--dry-run"); code != 0 || !strings.Contains(errs, "dry run") {
		t.Fatalf("dry run: exit %d %s", code, errs)
	}
	if code, _, errs := f.run(t, "usage", "set-plan", "over@example.com", "premium", "--reason", "ticket 1"); code != 0 || !strings.Contains(errs, "plan_upgraded") {
		t.Fatalf("upgrade: exit %d %s", code, errs)
	}
	if code, _, errs := f.run(t, "usage", "set-plan", f.kid, "basic"); code != 0 || !strings.Contains(errs, "plan_downgraded") {
		t.Fatalf("downgrade by profile id: exit %d %s", code, errs)
	}
	var events, audits, history int
	if err := f.pool.QueryRow(ctx, `SELECT
		(SELECT count(*) FROM public.usage_events WHERE account_id = $1::uuid AND event_type IN ('plan_upgraded', 'plan_downgraded')),
		(SELECT count(*) FROM public.audit_log WHERE table_name = 'account_plans' AND record_id = $1::text AND changed_by = 'ops@example.com'),
		(SELECT count(*) FROM public.account_plan_history WHERE account_id = $1::uuid)`, f.overAcct).Scan(&events, &audits, &history); err != nil {
		t.Fatal(err)
	}
	if events != 2 || audits != 2 || history != 2 {
		t.Fatalf("events %d audits %d history %d, want 2 each (the dry run leaves none)", events, audits, history)
	}
	// plan-history: both changes, newest first, with who and why.
	code, out, _ := f.run(t, "usage", "plan-history", "over@example.com", "-o", "json")
	var hist []struct {
		OldPlan   *string `json:"old_plan"`
		NewPlan   string  `json:"new_plan"`
		Change    string  `json:"change"`
		ChangedBy *string `json:"changed_by"`
		Reason    *string `json:"reason"`
	}
	if code != 0 || json.Unmarshal([]byte(out), &hist) != nil || len(hist) != 2 {
		t.Fatalf("plan-history: exit %d %s", code, out)
	}
	if hist[0].NewPlan != "basic" || hist[0].Change != "plan_downgraded" || hist[1].NewPlan != "premium" ||
		hist[1].Reason == nil || *hist[1].Reason != "ticket 1" || hist[1].ChangedBy == nil || *hist[1].ChangedBy != "ops@example.com" {
		t.Fatalf("plan-history: %s", out)
	}
	if code, _, _ := f.run(t, "usage", "plan-history", "nobody@example.com"); code != ExitNotFound {
		t.Fatalf("plan-history of an unknown account: exit %d", code)
	}
	code, out, _ = f.run(t, "usage", "events", "over@example.com", "--type", "plan_downgraded", "-o", "json")
	if code != 0 || !strings.Contains(out, `"new_plan": "basic"`) {
		t.Fatalf("events: exit %d %s", code, out)
	}
	if code, _, _ := f.run(t, "usage", "set-plan", "over@example.com", "gold"); code != ExitNotFound {
		t.Fatalf("unknown plan: exit %d", code)
	}
	if code, _, _ := f.run(t, "usage", "events", "over@example.com", "--type", "bogus"); code != ExitUsage {
		t.Fatalf("bad --type: exit %d", code)
	}
	// A profile id lists that profile's events only.
	code, out, _ = f.run(t, "usage", "events", f.kid, "--type", "shell_file_uploaded", "-o", "json")
	var evs []map[string]any
	if code != 0 || json.Unmarshal([]byte(out), &evs) != nil || len(evs) != 5 {
		t.Fatalf("profile events: exit %d %d", code, len(evs))
	}
}
