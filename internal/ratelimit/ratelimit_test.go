package ratelimit_test

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/v3ctl/v3ctl/internal/db"
	"github.com/v3ctl/v3ctl/internal/ratelimit"
	"github.com/v3ctl/v3ctl/internal/testdb"
)

// helperEnv makes the test binary act as a capacity holder that acquires,
// prints its hold and then hangs until it is killed (TestSIGKILLedHolder).
const helperEnv = "V3CTL_RATELIMIT_HOLDER_URL"

func TestMain(m *testing.M) {
	if u := os.Getenv(helperEnv); u != "" {
		os.Exit(holder(u))
	}
	os.Exit(m.Run())
}

func holder(u string) int {
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, u)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	g, err := ratelimit.Acquire(ctx, conn, ratelimit.Request{Provider: "test", Endpoint: "killed", EstimatedTokens: 5, Hold: 2 * time.Second})
	if err != nil || !g.Granted {
		fmt.Fprintln(os.Stderr, "holder: not granted", g, err)
		return 1
	}
	fmt.Printf("%s %s\n", g.HoldID, g.ExpiresAt.UTC().Format(time.RFC3339Nano))
	select {} // hold forever; the test SIGKILLs us
}

func ptr[T any](v T) *T { return &v }

// addLimit creates provider "test" / endpoint with the given limits.
func addLimit(t testing.TB, pool *pgxpool.Pool, endpoint string, rpm int, tpm *int, conc, window int) {
	t.Helper()
	_, err := ratelimit.Add(context.Background(), pool, ratelimit.Config{
		Provider: "test", Endpoint: endpoint, RequestsPerMinute: rpm, TokensPerMinute: tpm,
		Concurrency: conc, WindowSeconds: window}, "tester", "test setup", false)
	if err != nil {
		t.Fatal(err)
	}
}

func acquire(t testing.TB, q db.DB, endpoint string, est int) ratelimit.Grant {
	t.Helper()
	g, err := ratelimit.Acquire(context.Background(), q, ratelimit.Request{Provider: "test", Endpoint: endpoint, EstimatedTokens: est})
	if err != nil {
		t.Fatal(err)
	}
	return g
}

func status(t testing.TB, q db.DB, endpoint string) ratelimit.Status {
	t.Helper()
	st, err := ratelimit.List(context.Background(), q, "test", endpoint)
	if err != nil {
		t.Fatal(err)
	}
	if len(st) != 1 {
		t.Fatalf("status of test/%s: %d rows", endpoint, len(st))
	}
	return st[0]
}

// sleepUntilServer sleeps until the server clock has passed ts.
func sleepUntilServer(t testing.TB, q db.DB, ts time.Time) {
	t.Helper()
	var ms float64
	if err := q.QueryRow(context.Background(), `SELECT extract(epoch FROM $1::timestamptz - clock_timestamp()) * 1000`, ts).Scan(&ms); err != nil {
		t.Fatal(err)
	}
	if ms > 0 {
		time.Sleep(time.Duration(ms)*time.Millisecond + 20*time.Millisecond)
	}
}

func pgCode(err error) string {
	var pg *pgconn.PgError
	if errors.As(err, &pg) {
		return pg.Code
	}
	return ""
}

func TestSeededLimits(t *testing.T) {
	pool := testdb.New(t)
	st, err := ratelimit.List(context.Background(), pool, "", "")
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]string{}
	for _, s := range st {
		tpm := "-"
		if s.TokensPerMinute != nil {
			tpm = fmt.Sprint(*s.TokensPerMinute)
		}
		got[s.Key()] = fmt.Sprintf("%d/%s/%d/%s/%d", s.RequestsPerMinute, tpm, s.Concurrency, s.Status, s.WindowSeconds)
	}
	want := map[string]string{
		"openai/gpt-4o-mini":  "500/200000/50/active/60",
		"openai/gpt-4-vision": "100/20000/20/active/60",
		"google/vision-api":   "1800/-/100/active/60",
		"anthropic/claude-3":  "400/100000/25/active/60",
	}
	if len(got) != len(want) {
		t.Fatalf("seeded %v, want %v", got, want)
	}
	for k, v := range want {
		if got[k] != v {
			t.Errorf("%s = %s, want %s", k, got[k], v)
		}
	}
}

// The acceptance test: 200 goroutines hammer one provider/endpoint. From the
// server's grant log, no sliding window (t-W, t] at any grant t exceeds the
// requests or tokens limit, and the number of calls in flight never exceeds
// the concurrency limit.
func TestSlidingWindowConcurrent(t *testing.T) {
	if testing.Short() {
		t.Skip("runs for several seconds")
	}
	const (
		rpm, tpm, conc = 25, 220, 4
		window         = 2 * time.Second
		workers        = 200
	)
	pool := testdb.New(t)
	addLimit(t, pool, "window", rpm, ptr(tpm), conc, int(window/time.Second))

	ctx := context.Background()
	start := time.Now()
	var grants, refusals, reqRefusals, tokRefusals atomic.Int64
	var inFlight, maxInFlight atomic.Int64
	errs := make(chan error, workers)
	done := func() bool {
		el := time.Since(start)
		return el > 30*time.Second || (el > 3*window && grants.Load() >= 2*rpm)
	}
	var wg sync.WaitGroup
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for !done() {
				est := 1 + rand.IntN(40)
				g, err := ratelimit.Acquire(ctx, pool, ratelimit.Request{Provider: "test", Endpoint: "window", EstimatedTokens: est})
				if err != nil {
					errs <- err
					return
				}
				if !g.Granted {
					refusals.Add(1)
					switch g.Reason {
					case ratelimit.ReasonRequests:
						reqRefusals.Add(1)
					case ratelimit.ReasonTokens:
						tokRefusals.Add(1)
					case ratelimit.ReasonConcurrency:
					default:
						errs <- fmt.Errorf("unexpected refusal %q", g.Reason)
						return
					}
					if g.RetryAfter <= 0 {
						errs <- fmt.Errorf("refusal %q without retry-after", g.Reason)
						return
					}
					time.Sleep(min(g.RetryAfter, time.Duration(1+rand.IntN(20))*time.Millisecond))
					continue
				}
				grants.Add(1)
				n := inFlight.Add(1)
				for {
					m := maxInFlight.Load()
					if n <= m || maxInFlight.CompareAndSwap(m, n) {
						break
					}
				}
				time.Sleep(time.Duration(rand.IntN(20)) * time.Millisecond)
				inFlight.Add(-1)
				if _, err := ratelimit.Release(ctx, pool, g.HoldID, rand.IntN(est+1)); err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}

	// The server's grant log.
	rows, err := pool.Query(ctx, `SELECT g.granted_at, g.tokens, g.tokens_actual IS NOT NULL, g.release_reason
		FROM public.api_capacity_ledger g JOIN public.api_rate_limits l ON l.id = g.limit_id
		WHERE l.provider_name = 'test' AND l.api_endpoint = 'window' ORDER BY g.granted_at`)
	if err != nil {
		t.Fatal(err)
	}
	type grant struct {
		at     time.Time
		tokens int
	}
	var log []grant
	for rows.Next() {
		var g grant
		var corrected bool
		var reason *string
		if err := rows.Scan(&g.at, &g.tokens, &corrected, &reason); err != nil {
			t.Fatal(err)
		}
		if !corrected || reason == nil || *reason != "released" {
			t.Fatalf("grant at %s: corrected=%v reason=%v; every grant was released with its actual tokens", g.at, corrected, reason)
		}
		log = append(log, g)
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	if int64(len(log)) != grants.Load() {
		t.Fatalf("grant log has %d rows, callers saw %d grants", len(log), grants.Load())
	}
	sort.Slice(log, func(i, j int) bool { return log[i].at.Before(log[j].at) })
	maxReq, maxTok := 0, 0
	lo, sum := 0, 0
	for i, g := range log {
		sum += g.tokens
		for !log[lo].at.After(g.at.Add(-window)) { // drop grants at or before t-W
			sum -= log[lo].tokens
			lo++
		}
		n := i - lo + 1
		if n > rpm {
			t.Errorf("window ending %s holds %d grants > %d requests per window", g.at.Format(time.RFC3339Nano), n, rpm)
		}
		if sum > tpm {
			t.Errorf("window ending %s holds %d tokens > %d tokens per window", g.at.Format(time.RFC3339Nano), sum, tpm)
		}
		maxReq, maxTok = max(maxReq, n), max(maxTok, sum)
	}
	if m := maxInFlight.Load(); m > conc {
		t.Errorf("%d calls in flight at once > concurrency limit %d", m, conc)
	}
	// The test must have pushed against the limits to prove anything.
	if reqRefusals.Load()+tokRefusals.Load() == 0 {
		t.Errorf("no request or token refusals: the window limits were never reached")
	}
	if len(log) <= rpm {
		t.Errorf("only %d grants: the window never slid", len(log))
	}
	st := status(t, pool, "window")
	if st.InFlight != 0 {
		t.Errorf("in flight after every release: %d", st.InFlight)
	}
	if st.RefusalsLastHour != refusals.Load() {
		t.Errorf("refusals counted %d, callers saw %d", st.RefusalsLastHour, refusals.Load())
	}
	t.Logf("%d grants, %d refusals (requests %d, tokens %d); busiest window %d req / %d tokens; max in flight %d; %s",
		len(log), refusals.Load(), reqRefusals.Load(), tokRefusals.Load(), maxReq, maxTok, maxInFlight.Load(), time.Since(start).Round(time.Millisecond))
}

// A refused caller learns exactly when the window frees a slot.
func TestRetryAfterRequests(t *testing.T) {
	pool := testdb.New(t)
	addLimit(t, pool, "rpm", 3, nil, 10, 2)
	var first ratelimit.Grant
	for i := 0; i < 3; i++ {
		g := acquire(t, pool, "rpm", 0)
		if !g.Granted {
			t.Fatalf("grant %d refused: %+v", i, g)
		}
		if i == 0 {
			first = g
		}
	}
	g := acquire(t, pool, "rpm", 0)
	if g.Granted || g.Reason != ratelimit.ReasonRequests {
		t.Fatalf("4th call within the window: %+v, want refused for requests", g)
	}
	if g.RetryAfter <= 0 || g.RetryAfter > 2*time.Second {
		t.Fatalf("retry-after %s, want within the 2s window", g.RetryAfter)
	}
	// Releasing frees concurrency but not the window.
	if _, err := ratelimit.Release(context.Background(), pool, first.HoldID, ratelimit.KeepEstimate); err != nil {
		t.Fatal(err)
	}
	if g2 := acquire(t, pool, "rpm", 0); g2.Granted {
		t.Fatalf("granted after a release although the window is full: %+v", g2)
	}
	time.Sleep(g.RetryAfter + 20*time.Millisecond)
	if g := acquire(t, pool, "rpm", 0); !g.Granted {
		t.Fatalf("refused after waiting the retry-after: %+v", g)
	}
}

func TestTokenCorrection(t *testing.T) {
	pool := testdb.New(t)
	ctx := context.Background()
	addLimit(t, pool, "tpm", 100, ptr(100), 10, 60)
	a := acquire(t, pool, "tpm", 80)
	if !a.Granted || a.Remaining == nil || a.Remaining.Tokens == nil || *a.Remaining.Tokens != 20 {
		t.Fatalf("first grant: %+v", a)
	}
	if g := acquire(t, pool, "tpm", 30); g.Granted || g.Reason != ratelimit.ReasonTokens || g.RetryAfter <= 0 {
		t.Fatalf("80+30 > 100 tokens: %+v, want refused for tokens with a retry-after", g)
	}
	r, err := ratelimit.Release(ctx, pool, a.HoldID, 10)
	if err != nil || !r.Released || !r.Corrected {
		t.Fatalf("release: %+v %v", r, err)
	}
	if st := status(t, pool, "tpm"); st.TokensUsed != 10 || st.RequestsUsed != 1 || st.InFlight != 0 {
		t.Fatalf("after correcting 80 -> 10: %+v", st)
	}
	b := acquire(t, pool, "tpm", 30)
	if !b.Granted {
		t.Fatalf("10+30 <= 100 tokens: %+v", b)
	}
	// An under-estimate is charged in full: the window pays for it.
	if _, err := ratelimit.Release(ctx, pool, b.HoldID, 85); err != nil {
		t.Fatal(err)
	}
	if st := status(t, pool, "tpm"); st.TokensUsed != 95 {
		t.Fatalf("after correcting 30 -> 85: tokens used %d, want 95", st.TokensUsed)
	}
	if g := acquire(t, pool, "tpm", 10); g.Granted || g.Reason != ratelimit.ReasonTokens {
		t.Fatalf("95+10 > 100: %+v", g)
	}
	// A second release corrects nothing more.
	r, err = ratelimit.Release(ctx, pool, b.HoldID, 0)
	if err != nil || r.Released || r.Corrected {
		t.Fatalf("second release: %+v %v", r, err)
	}
	if st := status(t, pool, "tpm"); st.TokensUsed != 95 {
		t.Fatalf("a second release changed the window: %d", st.TokensUsed)
	}
	// The running totals the acquire path uses agree with the ledger.
	var wt int64
	if err := pool.QueryRow(ctx, `SELECT window_tokens FROM public.api_rate_limits WHERE provider_name='test' AND api_endpoint='tpm'`).Scan(&wt); err != nil {
		t.Fatal(err)
	}
	if wt != 95 {
		t.Fatalf("window_tokens = %d, want 95", wt)
	}
}

func TestEstimateAboveLimitRefusedAtOnce(t *testing.T) {
	pool := testdb.New(t)
	addLimit(t, pool, "small", 100, ptr(50), 10, 60)
	g := acquire(t, pool, "small", 51)
	if g.Granted || g.Reason != ratelimit.ReasonTooLarge || g.RetryAfter != 0 || !g.Permanent() || g.Retryable() {
		t.Fatalf("estimate 51 > 50 tokens per minute: %+v, want a permanent refusal without retry-after", g)
	}
	// AcquireWait does not wait for it.
	g, err := ratelimit.AcquireWait(context.Background(), pool,
		ratelimit.Request{Provider: "test", Endpoint: "small", EstimatedTokens: 51}, ratelimit.WaitPolicy{MaxWait: time.Hour})
	if err != nil || g.Granted || g.Reason != ratelimit.ReasonTooLarge {
		t.Fatalf("AcquireWait: %+v %v", g, err)
	}
	if g := acquire(t, pool, "small", 50); !g.Granted {
		t.Fatalf("estimate equal to the limit: %+v", g)
	}
	// A provider without a token limit takes any estimate.
	if g, err := ratelimit.Acquire(context.Background(), pool, ratelimit.Request{Provider: "google", Endpoint: "vision-api", EstimatedTokens: 1 << 30}); err != nil || !g.Granted {
		t.Fatalf("google/vision-api has no token limit: %+v %v", g, err)
	}
}

// A 429 reported by one worker blocks the provider/endpoint for all.
func TestVendorPushbackSharedAcrossWorkers(t *testing.T) {
	u := testdb.NewURL(t)
	workerA, workerB := testdb.Pool(t, u), testdb.Pool(t, u)
	ctx := context.Background()
	addLimit(t, workerA, "pushback", 100, nil, 10, 60)
	if g := acquire(t, workerB, "pushback", 1); !g.Granted {
		t.Fatalf("before the 429: %+v", g)
	}
	until, err := ratelimit.ReportRateLimited(ctx, workerA, "test", "pushback", 3*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	g := acquire(t, workerB, "pushback", 1)
	if g.Granted || g.Reason != ratelimit.ReasonBlocked || g.RetryAfter <= 0 || g.RetryAfter > 3*time.Second {
		t.Fatalf("other worker after the 429: %+v, want blocked with retry-after <= 3s", g)
	}
	// A shorter retry-after does not shorten the block.
	until2, err := ratelimit.ReportRateLimited(ctx, workerB, "test", "pushback", 100*time.Millisecond)
	if err != nil || !until2.Equal(until) {
		t.Fatalf("shorter report moved the block from %s to %s (%v)", until, until2, err)
	}
	st := status(t, workerA, "pushback")
	if st.BlockedUntil == nil || !st.BlockedUntil.Equal(until) || st.Vendor429LastHour != 2 {
		t.Fatalf("status: %+v", st)
	}
	sleepUntilServer(t, workerB, until)
	if g := acquire(t, workerB, "pushback", 1); !g.Granted {
		t.Fatalf("after the block ended: %+v", g)
	}
	// Default pushback when the vendor gave no retry-after.
	until3, err := ratelimit.ReportRateLimited(ctx, workerA, "test", "pushback", 0)
	if err != nil {
		t.Fatal(err)
	}
	if d := time.Until(until3); d < 50*time.Second || d > 70*time.Second {
		t.Fatalf("default pushback ends in %s, want about ratelimit.default_pushback_seconds (60s)", d)
	}
	// reset clears it.
	if _, err := ratelimit.Reset(ctx, workerA, "test", "pushback", "tester", "", false); err != nil {
		t.Fatal(err)
	}
	if g := acquire(t, workerB, "pushback", 1); !g.Granted {
		t.Fatalf("after reset: %+v", g)
	}
}

func TestDisabledAndMaintenanceRefused(t *testing.T) {
	pool := testdb.New(t)
	ctx := context.Background()
	addLimit(t, pool, "status", 100, nil, 10, 60)
	for _, s := range []string{"disabled", "maintenance"} {
		if _, err := ratelimit.Set(ctx, pool, "test", "status", ratelimit.Changes{Status: ptr(s)}, "tester", "", false); err != nil {
			t.Fatal(err)
		}
		g := acquire(t, pool, "status", 1)
		if g.Granted || g.Reason != s || g.RetryAfter != 0 {
			t.Fatalf("%s provider: %+v", s, g)
		}
		if g.RescheduleAfter(30*time.Second) != 30*time.Second {
			t.Fatalf("%s: reschedule delay should fall back to the backpressure delay", s)
		}
	}
	st := status(t, pool, "status")
	if st.RefusalsByReason["disabled"] != 1 || st.RefusalsByReason["maintenance"] != 1 {
		t.Fatalf("refusals by reason: %v", st.RefusalsByReason)
	}
	if _, err := ratelimit.Set(ctx, pool, "test", "status", ratelimit.Changes{Status: ptr("active")}, "tester", "", false); err != nil {
		t.Fatal(err)
	}
	if g := acquire(t, pool, "status", 1); !g.Granted {
		t.Fatalf("active again: %+v", g)
	}
}

// A holder that never releases: its capacity returns when its lease ends.
func TestLeaseExpiryReturnsCapacity(t *testing.T) {
	pool := testdb.New(t)
	ctx := context.Background()
	addLimit(t, pool, "lease", 100, nil, 1, 60)
	g, err := ratelimit.Acquire(ctx, pool, ratelimit.Request{Provider: "test", Endpoint: "lease", Hold: time.Second})
	if err != nil || !g.Granted {
		t.Fatalf("%+v %v", g, err)
	}
	if r := acquire(t, pool, "lease", 0); r.Granted || r.Reason != ratelimit.ReasonConcurrency || r.RetryAfter <= 0 {
		t.Fatalf("while held: %+v", r)
	}
	sleepUntilServer(t, pool, g.ExpiresAt)
	n := acquire(t, pool, "lease", 0)
	if !n.Granted {
		t.Fatalf("after the lease ended: %+v", n)
	}
	var reason string
	var releasedAt time.Time
	if err := pool.QueryRow(ctx, `SELECT release_reason, released_at FROM public.api_capacity_ledger WHERE id = $1`, g.HoldID).Scan(&reason, &releasedAt); err != nil {
		t.Fatal(err)
	}
	if reason != "expired" || !releasedAt.Equal(g.ExpiresAt) {
		t.Fatalf("expired hold logged as %s at %s, want expired at %s", reason, releasedAt, g.ExpiresAt)
	}
	// The late release of the expired hold frees nothing (the slot is n's now)
	// but still corrects its tokens.
	r, err := ratelimit.Release(ctx, pool, g.HoldID, 0)
	if err != nil || r.Released || !r.Corrected {
		t.Fatalf("late release: %+v %v", r, err)
	}
	if r := acquire(t, pool, "lease", 0); r.Granted {
		t.Fatalf("a late release must not free another holder's slot: %+v", r)
	}
}

// A real process holding capacity is SIGKILLed: its capacity stays taken
// until its lease ends and returns at the end of the lease.
func TestSIGKILLedHolder(t *testing.T) {
	if testing.Short() {
		t.Skip("spawns a process")
	}
	u := testdb.NewURL(t)
	pool := testdb.Pool(t, u)
	ctx := context.Background()
	addLimit(t, pool, "killed", 100, nil, 1, 60)

	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), helperEnv+"="+u)
	cmd.Stderr = os.Stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	line, err := bufio.NewReader(out).ReadString('\n')
	if err != nil {
		_ = cmd.Process.Kill()
		t.Fatalf("holder did not report its hold: %v", err)
	}
	f := strings.Fields(line)
	holdID := f[0]
	expires, err := time.Parse(time.RFC3339Nano, f[1])
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	_ = cmd.Wait()

	// The holder is dead; its hold is not released, so capacity stays taken.
	if g := acquire(t, pool, "killed", 0); g.Granted || g.Reason != ratelimit.ReasonConcurrency {
		t.Fatalf("right after the kill: %+v", g)
	}
	var n int
	if err := pool.QueryRow(ctx, `SELECT count(*) FROM public.api_capacity_holds WHERE id = $1`, holdID).Scan(&n); err != nil || n != 1 {
		t.Fatalf("killed holder's hold: %d %v", n, err)
	}
	// At the end of its lease (2s) the capacity is back.
	sleepUntilServer(t, pool, expires)
	if g := acquire(t, pool, "killed", 0); !g.Granted {
		t.Fatalf("after the killed holder's lease: %+v", g)
	}
	if err := pool.QueryRow(ctx, `SELECT count(*) FROM public.api_capacity_holds WHERE id = $1`, holdID).Scan(&n); err != nil || n != 0 {
		t.Fatalf("dead hold not swept: %d %v", n, err)
	}
}

// The app's original boolean pair keeps working.
func TestLegacyPair(t *testing.T) {
	pool := testdb.New(t)
	ctx := context.Background()
	addLimit(t, pool, "legacy", 100, ptr(1000), 2, 60)
	call := func(sql string, args ...any) bool {
		t.Helper()
		var ok bool
		if err := pool.QueryRow(ctx, sql, args...).Scan(&ok); err != nil {
			t.Fatal(err)
		}
		return ok
	}
	acq := func(est int) bool {
		return call(`SELECT public.acquire_api_capacity('test', 'legacy', $1)`, est)
	}
	rel := func(est, actual int) bool {
		return call(`SELECT public.release_api_capacity('test', 'legacy', $1, $2)`, est, actual)
	}
	if !acq(100) || !acq(200) {
		t.Fatal("two grants expected")
	}
	if acq(10) {
		t.Fatal("third call exceeds concurrency 2")
	}
	// Release the one with estimate 200 (matching estimate preferred).
	if !rel(200, 50) {
		t.Fatal("release found no hold")
	}
	var est int
	if err := pool.QueryRow(ctx, `SELECT h.tokens_estimated FROM public.api_capacity_holds h`).Scan(&est); err != nil || est != 100 {
		t.Fatalf("remaining hold has estimate %d (%v), want 100", est, err)
	}
	if st := status(t, pool, "legacy"); st.TokensUsed != 150 || st.InFlight != 1 {
		t.Fatalf("after release 200->50: %+v", st)
	}
	if !rel(100, 100) {
		t.Fatal("second release found no hold")
	}
	if rel(100, 100) {
		t.Fatal("release with nothing held reported success")
	}
	if st := status(t, pool, "legacy"); st.InFlight != 0 || st.TokensUsed != 150 {
		t.Fatalf("final: %+v", st)
	}
}

func TestRefusalsAreSharded(t *testing.T) {
	pool := testdb.New(t)
	ctx := context.Background()
	addLimit(t, pool, "storm", 1, nil, 10, 60)
	acquire(t, pool, "storm", 0)
	const n = 200
	var wg sync.WaitGroup
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if g := acquire(t, pool, "storm", 0); g.Granted {
				t.Error("granted beyond 1 request per window")
			}
		}()
	}
	wg.Wait()
	var rows, total int
	if err := pool.QueryRow(ctx, `SELECT count(*), sum(refusals) FROM public.api_capacity_refusals`).Scan(&rows, &total); err != nil {
		t.Fatal(err)
	}
	if total != n {
		t.Fatalf("counted %d refusals, want %d", total, n)
	}
	if rows < 2 {
		t.Fatalf("%d refusals landed on %d row(s): not sharded", n, rows)
	}
	// Refusals leave the limits row untouched (its xmin is the last grant's).
	var xminGrant, xminNow string
	if err := pool.QueryRow(ctx, `SELECT xmin::text FROM public.api_rate_limits WHERE api_endpoint = 'storm'`).Scan(&xminNow); err != nil {
		t.Fatal(err)
	}
	if err := pool.QueryRow(ctx, `SELECT xmin::text FROM public.api_capacity_ledger`).Scan(&xminGrant); err != nil {
		t.Fatal(err)
	}
	if xminNow != xminGrant {
		t.Fatalf("the limits row was written by a refusal (xmin %s, last grant %s)", xminNow, xminGrant)
	}
}

func TestInvalidInputWritesNothing(t *testing.T) {
	pool := testdb.New(t)
	ctx := context.Background()
	addLimit(t, pool, "valid", 10, ptr(100), 1, 60)
	count := func() (n int) {
		t.Helper()
		if err := pool.QueryRow(ctx, `SELECT (SELECT count(*) FROM public.api_capacity_holds) + (SELECT count(*) FROM public.api_capacity_ledger)
			+ (SELECT count(*) FROM public.api_capacity_refusals)`).Scan(&n); err != nil {
			t.Fatal(err)
		}
		return n
	}
	cases := []struct {
		name string
		req  ratelimit.Request
		want string
	}{
		{"unknown endpoint", ratelimit.Request{Provider: "test", Endpoint: "nope"}, "valid provider/endpoint pairs"},
		{"unknown provider", ratelimit.Request{Provider: "nope", Endpoint: "valid"}, "test/valid"},
		{"negative tokens", ratelimit.Request{Provider: "test", Endpoint: "valid", EstimatedTokens: -1}, "must be >= 0"},
		{"hold too long", ratelimit.Request{Provider: "test", Endpoint: "valid", Hold: 100000 * time.Second}, "hold must be between"},
	}
	for _, c := range cases {
		_, err := ratelimit.Acquire(ctx, pool, c.req)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: error %v, want it to mention %q", c.name, err, c.want)
		}
		if strings.HasPrefix(c.name, "unknown") && !db.IsInvalidInput(err) {
			t.Errorf("%s: %v is not SQLSTATE 22023", c.name, err)
		}
	}
	if _, err := pool.Exec(ctx, `SELECT public.release_api_capacity_v2('6b5a8a92-5b1c-4e57-8f3b-2d0e3c1a0001', -5)`); pgCode(err) != "22023" {
		t.Errorf("negative actual tokens: %v", err)
	}
	if _, err := ratelimit.ReportRateLimited(ctx, pool, "test", "valid", -time.Second); err == nil {
		t.Error("negative retry-after accepted")
	}
	if _, err := pool.Exec(ctx, `SELECT public.report_api_rate_limited('test', 'valid', 100000)`); pgCode(err) != "22023" {
		t.Errorf("retry-after beyond a day: %v", err)
	}
	if n := count(); n != 0 {
		t.Fatalf("refused calls wrote %d rows", n)
	}
	// Releasing an unknown hold is not an error, and frees nothing.
	r, err := ratelimit.Release(ctx, pool, "6b5a8a92-5b1c-4e57-8f3b-2d0e3c1a0001", 5)
	if err != nil || r.Released || r.Corrected {
		t.Fatalf("unknown hold: %+v %v", r, err)
	}
}

// Browsers and anonymous callers cannot touch vendor capacity.
func TestRolesCannotCall(t *testing.T) {
	pool := testdb.New(t)
	ctx := context.Background()
	for _, role := range []string{"anon", "authenticated"} {
		for _, sql := range []string{
			`SELECT public.acquire_api_capacity('openai', 'gpt-4o-mini', 1)`,
			`SELECT public.acquire_api_capacity_v2('openai', 'gpt-4o-mini', 1)`,
			`SELECT public.release_api_capacity('openai', 'gpt-4o-mini', 1, 1)`,
			`SELECT public.report_api_rate_limited('openai', 'gpt-4o-mini', 60)`,
			`SELECT public.set_api_rate_limit('openai', 'gpt-4o-mini', '{"status":"disabled"}')`,
			`SELECT count(*) FROM public.api_rate_limits`,
			`SELECT count(*) FROM public.api_capacity_holds`,
		} {
			err := db.InTx(ctx, pool, func(tx pgx.Tx) error {
				if _, err := tx.Exec(ctx, `SET LOCAL ROLE `+role); err != nil {
					return err
				}
				if _, err := tx.Exec(ctx, `SELECT set_config('request.jwt.claims', '{"sub":"00000000-0000-0000-0000-000000000001","role":"`+role+`"}', true)`); err != nil {
					return err
				}
				_, err := tx.Exec(ctx, sql)
				return err
			})
			if pgCode(err) != "42501" {
				t.Errorf("%s: %s: %v, want permission denied", role, sql, err)
			}
		}
	}
}

func TestExtend(t *testing.T) {
	pool := testdb.New(t)
	ctx := context.Background()
	addLimit(t, pool, "extend", 100, nil, 2, 60)
	a, err := ratelimit.Acquire(ctx, pool, ratelimit.Request{Provider: "test", Endpoint: "extend", Hold: time.Second})
	if err != nil || !a.Granted {
		t.Fatal(a, err)
	}
	b, err := ratelimit.Acquire(ctx, pool, ratelimit.Request{Provider: "test", Endpoint: "extend", Hold: time.Second})
	if err != nil || !b.Granted {
		t.Fatal(b, err)
	}
	if _, err := ratelimit.Release(ctx, pool, b.HoldID, 0); err != nil {
		t.Fatal(err)
	}
	lost, err := ratelimit.Extend(ctx, pool, []string{a.HoldID, b.HoldID}, time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	if len(lost) != 1 || lost[0] != b.HoldID {
		t.Fatalf("lost %v, want only the released hold %s", lost, b.HoldID)
	}
	sleepUntilServer(t, pool, a.ExpiresAt)
	if g := acquire(t, pool, "extend", 0); !g.Granted {
		t.Fatalf("one slot is free: %+v", g)
	}
	if g := acquire(t, pool, "extend", 0); g.Granted || g.Reason != ratelimit.ReasonConcurrency {
		t.Fatalf("the extended hold should still count: %+v", g)
	}
	if st := status(t, pool, "extend"); st.InFlight != 2 {
		t.Fatalf("in flight %d, want 2 (extended + new)", st.InFlight)
	}
}

func TestAcquireWait(t *testing.T) {
	pool := testdb.New(t)
	ctx := context.Background()
	addLimit(t, pool, "wait", 1, nil, 1, 1)
	req := ratelimit.Request{Provider: "test", Endpoint: "wait"}
	first, err := ratelimit.AcquireWait(ctx, pool, req, ratelimit.WaitPolicy{})
	if err != nil || !first.Granted {
		t.Fatal(first, err)
	}
	// No waiting allowed: the refusal comes back with its retry-after.
	g, err := ratelimit.AcquireWait(ctx, pool, req, ratelimit.WaitPolicy{MaxWait: 0})
	if err != nil || g.Granted || !g.Retryable() {
		t.Fatalf("MaxWait 0: %+v %v", g, err)
	}
	// Release the hold (concurrency) in a moment; the window (1 s) frees too.
	go func() {
		time.Sleep(300 * time.Millisecond)
		_, _ = ratelimit.Release(ctx, pool, first.HoldID, 0)
	}()
	g, err = ratelimit.AcquireWait(ctx, pool, req, ratelimit.WaitPolicy{MaxWait: 30 * time.Second})
	if err != nil || !g.Granted {
		t.Fatalf("waited: %+v %v", g, err)
	}
	// A cancelled context stops the wait.
	cctx, cancel := context.WithTimeout(ctx, 50*time.Millisecond)
	defer cancel()
	_, err = ratelimit.AcquireWait(cctx, pool, req, ratelimit.WaitPolicy{MaxWait: time.Minute})
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("cancelled wait: %v", err)
	}
	p, err := ratelimit.LoadWaitPolicy(ctx, pool)
	if err != nil || p.MaxWait != 10*time.Second {
		t.Fatalf("policy from ratelimit.max_wait_seconds: %+v %v", p, err)
	}
}
