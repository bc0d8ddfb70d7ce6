package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/v3ctl/v3ctl/internal/ratelimit"
	"github.com/v3ctl/v3ctl/internal/testdb"
)

type limitsResult struct {
	code     int
	out, err string
}

func runLimits(t *testing.T, url string, args ...string) limitsResult {
	t.Helper()
	var out, errb bytes.Buffer
	t.Setenv("V3CTL_CONFIG", filepath.Join(t.TempDir(), "config.yaml"))
	a := NewApp(strings.NewReader(""), &out, &errb)
	code := Execute(context.Background(), a, append([]string{"--database-url", url, "--actor", "tester", "limits"}, args...))
	return limitsResult{code, out.String(), errb.String()}
}

func TestLimitsCLI(t *testing.T) {
	u := testdb.NewURL(t)
	pool := testdb.Pool(t, u)
	ctx := context.Background()
	audits := func(op string) int {
		t.Helper()
		var n int
		if err := pool.QueryRow(ctx, `SELECT count(*) FROM public.audit_log WHERE table_name = 'api_rate_limits' AND operation = $1
			AND changed_by = 'tester'`, op).Scan(&n); err != nil {
			t.Fatal(err)
		}
		return n
	}
	get := func(provider, endpoint string) ratelimit.Status {
		t.Helper()
		st, err := ratelimit.List(ctx, pool, provider, endpoint)
		if err != nil || len(st) != 1 {
			t.Fatalf("%s/%s: %v %v", provider, endpoint, st, err)
		}
		return st[0]
	}

	// list: live use.
	g, err := ratelimit.Acquire(ctx, pool, ratelimit.Request{Provider: "openai", Endpoint: "gpt-4o-mini", EstimatedTokens: 1500})
	if err != nil || !g.Granted {
		t.Fatal(g, err)
	}
	if _, err := ratelimit.Acquire(ctx, pool, ratelimit.Request{Provider: "openai", Endpoint: "gpt-4o-mini", EstimatedTokens: 300000}); err != nil {
		t.Fatal(err)
	}
	if _, err := ratelimit.ReportRateLimited(ctx, pool, "openai", "gpt-4o-mini", time.Minute); err != nil {
		t.Fatal(err)
	}
	r := runLimits(t, u, "list")
	if r.code != 0 {
		t.Fatalf("list: %+v", r)
	}
	var line string
	for _, l := range strings.Split(r.out, "\n") {
		if strings.HasPrefix(l, "openai/gpt-4o-mini") {
			line = l
		}
	}
	for _, want := range []string{"1/500", "1500/200000", "1/50", "1 (estimate_exceeds_limit 1)"} {
		if !strings.Contains(line, want) {
			t.Errorf("list row %q lacks %q", line, want)
		}
	}
	if len(strings.Split(strings.TrimSpace(r.out), "\n")) != 5 {
		t.Errorf("list: want a header and 4 seeded rows:\n%s", r.out)
	}
	r = runLimits(t, u, "list", "openai", "-o", "json")
	var st []ratelimit.Status
	if r.code != 0 || json.Unmarshal([]byte(r.out), &st) != nil || len(st) != 2 {
		t.Fatalf("list openai -o json: %+v", r)
	}
	if st[1].Key() != "openai/gpt-4o-mini" || st[1].BlockedUntil == nil || st[1].Vendor429LastHour != 1 || st[1].InFlight != 1 {
		t.Fatalf("json row: %+v", st[1])
	}
	if r := runLimits(t, u, "list", "nope"); r.code != ExitUsage || !strings.Contains(r.err, "openai/gpt-4o-mini") {
		t.Fatalf("list of an unknown provider: %+v", r)
	}

	// set: bad input exits 2 naming the valid values, and changes nothing.
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"set", "openai/gpt-4o-mini", "--status", "paused"}, "active, disabled, maintenance"},
		{[]string{"set", "openai/gpt-4o-mini"}, "nothing to change"},
		{[]string{"set", "openai/gpt-4o-mini", "--tpm", "lots"}, `"none"`},
		{[]string{"set", "openai/gpt-4o-mini", "--rpm", "0"}, "positive integer"},
		{[]string{"set", "openai/gpt-4o-mini", "--window-seconds", "7200"}, "between 1 and 3600"},
		{[]string{"set", "openai", "--rpm", "5"}, "PROVIDER/ENDPOINT"},
		{[]string{"set", "openai/gpt-5", "--rpm", "5"}, "valid provider/endpoint pairs: anthropic/claude-3"},
	} {
		r := runLimits(t, u, c.args...)
		if r.code != ExitUsage || !strings.Contains(r.err, c.want) {
			t.Errorf("%v: exit %d, stderr %q; want exit 2 mentioning %q", c.args, r.code, r.err, c.want)
		}
	}
	// --dry-run shows the change and writes nothing.
	r = runLimits(t, u, "set", "openai/gpt-4o-mini", "--rpm", "600", "--tpm", "none", "--dry-run")
	if r.code != 0 || !strings.Contains(r.err, "rpm 500 -> 600, tpm 200000 -> none") || !strings.Contains(r.err, "nothing was changed") {
		t.Fatalf("set --dry-run: %+v", r)
	}
	if s := get("openai", "gpt-4o-mini"); s.RequestsPerMinute != 500 || s.TokensPerMinute == nil || audits("UPDATE") != 0 {
		t.Fatalf("dry run changed something: %+v", s)
	}
	r = runLimits(t, u, "set", "openai/gpt-4o-mini", "--rpm", "600", "--status", "maintenance", "--reason", "tier change")
	if r.code != 0 || !strings.Contains(r.err, "rpm 500 -> 600, status active -> maintenance") {
		t.Fatalf("set: %+v", r)
	}
	if s := get("openai", "gpt-4o-mini"); s.RequestsPerMinute != 600 || s.Status != "maintenance" || audits("UPDATE") != 1 {
		t.Fatalf("after set: %+v, %d audit rows", s, audits("UPDATE"))
	}
	var reason string
	if err := pool.QueryRow(ctx, `SELECT reason FROM public.audit_log WHERE operation = 'UPDATE' AND table_name = 'api_rate_limits'`).Scan(&reason); err != nil || reason != "tier change" {
		t.Fatalf("audit reason %q %v", reason, err)
	}
	if g, _ := ratelimit.Acquire(ctx, pool, ratelimit.Request{Provider: "openai", Endpoint: "gpt-4o-mini"}); g.Granted || g.Reason != "maintenance" {
		t.Fatalf("acquire in maintenance: %+v", g)
	}
	// The same values again: nothing changes, no audit row.
	if r := runLimits(t, u, "set", "openai/gpt-4o-mini", "--rpm", "600"); r.code != 0 || !strings.Contains(r.err, "nothing changed") || audits("UPDATE") != 1 {
		t.Fatalf("no-op set: %+v", r)
	}

	// add
	if r := runLimits(t, u, "add", "mistral/large", "--tpm", "100"); r.code != ExitUsage || !strings.Contains(r.err, "--rpm is required") {
		t.Fatalf("add without --rpm: %+v", r)
	}
	if r := runLimits(t, u, "add", "Mistral/large", "--rpm", "10", "--concurrency", "2"); r.code != ExitUsage || !strings.Contains(r.err, "lowercase") {
		t.Fatalf("add with a bad name: %+v", r)
	}
	if r := runLimits(t, u, "add", "mistral/large", "--rpm", "10", "--concurrency", "2", "--dry-run"); r.code != 0 || audits("INSERT") != 0 {
		t.Fatalf("add --dry-run: %+v", r)
	}
	r = runLimits(t, u, "add", "mistral/large", "--rpm", "10", "--concurrency", "2", "--tpm", "5000", "-o", "json")
	var cfg ratelimit.Config
	if r.code != 0 || json.Unmarshal([]byte(r.out), &cfg) != nil || cfg.Key() != "mistral/large" || cfg.TokensPerMinute == nil || *cfg.TokensPerMinute != 5000 || cfg.Status != "active" {
		t.Fatalf("add: %+v", r)
	}
	if audits("INSERT") != 1 {
		t.Fatal("add not audited")
	}
	if r := runLimits(t, u, "add", "mistral/large", "--rpm", "10", "--concurrency", "2"); r.code != ExitUsage || !strings.Contains(r.err, "already exists") {
		t.Fatalf("add twice: %+v", r)
	}

	// reset: holds, window and block go; limits stay.
	if _, err := ratelimit.Acquire(ctx, pool, ratelimit.Request{Provider: "mistral", Endpoint: "large", EstimatedTokens: 10}); err != nil {
		t.Fatal(err)
	}
	if _, err := ratelimit.ReportRateLimited(ctx, pool, "mistral", "large", time.Hour); err != nil {
		t.Fatal(err)
	}
	if r := runLimits(t, u, "reset", "mistral"); r.code != ExitUsage || !strings.Contains(r.err, "--yes") {
		t.Fatalf("reset without --yes and without a terminal: %+v", r)
	}
	if r := runLimits(t, u, "reset", "mistral", "--dry-run"); r.code != 0 || !strings.Contains(r.err, "1 hold(s), 1 grant(s) cleared, 1 block(s) lifted") {
		t.Fatalf("reset --dry-run: %+v", r)
	}
	if s := get("mistral", "large"); s.InFlight != 1 || s.BlockedUntil == nil {
		t.Fatalf("dry run reset something: %+v", s)
	}
	if r := runLimits(t, u, "reset", "nobody", "--yes"); r.code != ExitUsage || !strings.Contains(r.err, "valid providers") {
		t.Fatalf("reset of an unknown provider: %+v", r)
	}
	if r := runLimits(t, u, "reset", "mistral", "--yes", "--reason", "incident"); r.code != 0 {
		t.Fatalf("reset: %+v", r)
	}
	if s := get("mistral", "large"); s.InFlight != 0 || s.BlockedUntil != nil || s.RequestsUsed != 0 || s.RequestsPerMinute != 10 || audits("RESET") != 1 {
		t.Fatalf("after reset: %+v", s)
	}

	// remove
	if r := runLimits(t, u, "remove", "mistral/large"); r.code != ExitUsage {
		t.Fatalf("remove without --yes: %+v", r)
	}
	if r := runLimits(t, u, "remove", "mistral/large", "--dry-run"); r.code != 0 || audits("DELETE") != 0 {
		t.Fatalf("remove --dry-run: %+v", r)
	}
	if r := runLimits(t, u, "remove", "mistral/large", "--yes"); r.code != 0 || audits("DELETE") != 1 {
		t.Fatalf("remove: %+v", r)
	}
	if r := runLimits(t, u, "list", "mistral/large"); r.code != ExitUsage {
		t.Fatalf("list after remove: %+v", r)
	}
}
