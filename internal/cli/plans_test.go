package cli

import (
	"context"
	"encoding/json"
	"strings"
	"testing"

	"github.com/v3ctl/v3ctl/internal/testdb"
)

// plans list/show/create/update/retire: seeded values, validation naming
// what is wrong, dry runs, audit rows, retired plans not assignable.
func TestPlansLifecycle(t *testing.T) {
	t.Parallel()
	u := testdb.NewURL(t)
	pool := testdb.Pool(t, u)
	ctx := context.Background()
	v3 := func(args ...string) (int, string, string) {
		return run(t, append([]string{"--database-url", u, "--actor", "ops@example.com"}, args...)...)
	}
	code, out, _ := v3("plans", "list", "-o", "json")
	var plans []struct {
		Key        string `json:"plan_key"`
		Files      *int64 `json:"monthly_shell_files_limit"`
		Storage    *int64 `json:"storage_limit_bytes"`
		PriceCents int64  `json:"price_cents"`
		Active     bool   `json:"is_active"`
	}
	if code != 0 || json.Unmarshal([]byte(out), &plans) != nil || len(plans) != 4 {
		t.Fatalf("list: exit %d %s", code, out)
	}
	if plans[0].Key != "free" || *plans[0].Files != 10 || *plans[0].Storage != 100*1048576 || plans[1].PriceCents != 999 ||
		plans[3].Key != "enterprise" || plans[3].Files != nil || plans[3].PriceCents != 9999 {
		t.Fatalf("seeded plans: %+v", plans)
	}
	if code, _, errs := v3("plans", "create", "family", "--files", "300"); code != ExitUsage || !strings.Contains(errs, "--price") {
		t.Fatalf("create without limits: exit %d %s", code, errs)
	}
	if code, _, errs := v3("plans", "create", "family", "--files", "lots", "--pages", "1", "--ai-tokens", "1", "--storage-mb", "1", "--price", "1"); code != ExitUsage || !strings.Contains(errs, "unlimited") {
		t.Fatalf("bad limit: exit %d %s", code, errs)
	}
	if code, _, errs := v3("plans", "create", "Family!", "--files", "1", "--pages", "1", "--ai-tokens", "1", "--storage-mb", "1", "--price", "1"); code != ExitUsage || !strings.Contains(errs, "invalid plan key") {
		t.Fatalf("bad key: exit %d %s", code, errs)
	}
	create := []string{"plans", "create", "family", "--name", "Family", "--files", "300", "--pages", "3000", "--ai-tokens", "unlimited",
		"--storage-mb", "2.5", "--price", "19.99", "--rank", "15", "--reason", "launch"}
	if code, _, errs := v3(append(create, "--dry-run")...); code != 0 || !strings.Contains(errs, "dry run") {
		t.Fatalf("create dry run: exit %d %s", code, errs)
	}
	if code, _, _ := v3("plans", "show", "family"); code != ExitNotFound {
		t.Fatalf("dry run created the plan: exit %d", code)
	}
	if code, _, errs := v3(create...); code != 0 {
		t.Fatalf("create: exit %d %s", code, errs)
	}
	code, out, _ = v3("plans", "show", "family", "-o", "json")
	var fam struct {
		Tokens     *int64 `json:"monthly_ai_tokens_limit"`
		Storage    *int64 `json:"storage_limit_bytes"`
		PriceCents int64  `json:"price_cents"`
		Rank       int    `json:"tier_rank"`
	}
	if code != 0 || json.Unmarshal([]byte(out), &fam) != nil || fam.Tokens != nil || *fam.Storage != 2621440 || fam.PriceCents != 1999 || fam.Rank != 15 {
		t.Fatalf("show family: exit %d %s", code, out)
	}
	if code, _, errs := v3("plans", "update", "family"); code != ExitUsage || !strings.Contains(errs, "nothing to update") {
		t.Fatalf("empty update: exit %d %s", code, errs)
	}
	if code, _, errs := v3("plans", "update", "family", "--price", "19.99"); code != 0 || !strings.Contains(errs, "nothing changed") {
		t.Fatalf("same values: exit %d %s", code, errs)
	}
	if code, _, errs := v3("plans", "update", "family", "--ai-tokens", "1,500,000", "--price", "$21"); code != 0 {
		t.Fatalf("update: exit %d %s", code, errs)
	}
	if code, _, _ := v3("plans", "update", "gold", "--price", "1"); code != ExitNotFound {
		t.Fatalf("update unknown: exit %d", code)
	}
	var acct string
	if err := pool.QueryRow(ctx, `INSERT INTO auth.users (email) VALUES ('fam@example.com') RETURNING id::text`).Scan(&acct); err != nil {
		t.Fatal(err)
	}
	if code, _, errs := v3("usage", "set-plan", "fam@example.com", "family"); code != 0 {
		t.Fatalf("assign: exit %d %s", code, errs)
	}
	if code, _, errs := v3("plans", "retire", "family", "--reason", "replaced"); code != 0 || !strings.Contains(errs, "1 account(s) keep it") {
		t.Fatalf("retire: exit %d %s", code, errs)
	}
	if code, _, errs := v3("plans", "retire", "free"); code != ExitUsage || !strings.Contains(errs, "cannot be retired") {
		t.Fatalf("retire free: exit %d %s", code, errs)
	}
	if code, _, errs := v3("usage", "set-plan", "fam@example.com", "basic"); code != 0 {
		t.Fatalf("move off retired: exit %d %s", code, errs)
	}
	if code, _, errs := v3("usage", "set-plan", "fam@example.com", "family"); code != ExitUsage || !strings.Contains(errs, "retired") {
		t.Fatalf("assign retired: exit %d %s", code, errs)
	}
	_, out, _ = v3("plans", "list", "-o", "json")
	if strings.Contains(out, `"family"`) {
		t.Fatal("retired plan listed without --all")
	}
	_, out, _ = v3("plans", "list", "--all", "-o", "json")
	if !strings.Contains(out, `"family"`) {
		t.Fatal("retired plan missing from --all")
	}
	var ops []string
	rows, err := pool.Query(ctx, `SELECT operation FROM public.audit_log WHERE table_name = 'subscription_plans' AND record_id = 'family'
		AND changed_by = 'ops@example.com' ORDER BY id`)
	if err != nil {
		t.Fatal(err)
	}
	for rows.Next() {
		var op string
		_ = rows.Scan(&op)
		ops = append(ops, op)
	}
	if strings.Join(ops, ",") != "INSERT,UPDATE,RETIRE" {
		t.Fatalf("audit operations %v, want INSERT,UPDATE,RETIRE", ops)
	}
}
