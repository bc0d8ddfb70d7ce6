// Package ratelimit shares vendor API capacity (requests and tokens per
// sliding 60-second window, concurrent calls) between every worker. The rules
// live in SQL (migration 00003: acquire_api_capacity_v2,
// release_api_capacity_v2, extend_api_capacity, report_api_rate_limited);
// this package wraps them with Go types and adds the worker's
// wait-or-reschedule policy.
//
// A worker's call to a vendor looks like:
//
//	g, err := ratelimit.AcquireWait(ctx, pool, ratelimit.Request{
//		Provider: "openai", Endpoint: "gpt-4o-mini", EstimatedTokens: 1200,
//		JobID: job.ID, LeaseToken: job.LeaseToken}, policy)
//	if err != nil { ... }
//	if !g.Granted {
//		if g.Permanent() { fail the job (not retryable) }
//		else { queue.Reschedule(ctx, pool, lease, g.RescheduleAfter(backpressure), "capacity: "+g.Reason) }
//		return
//	}
//	resp, err := callVendor(...)
//	if resp.StatusCode == 429 {
//		d, _ := ratelimit.RetryAfterFromHeaders(resp.Header, time.Now())
//		ratelimit.ReportRateLimited(ctx, pool, "openai", "gpt-4o-mini", d)
//		ratelimit.Release(ctx, pool, g.HoldID, 0)
//		...
//	}
//	ratelimit.Release(ctx, pool, g.HoldID, resp.Usage.TotalTokens)
package ratelimit

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"strings"
	"time"

	"github.com/v3ctl/v3ctl/internal/db"
	"github.com/v3ctl/v3ctl/internal/sysconfig"
)

// Refusal reasons returned by acquire_api_capacity_v2.
const (
	ReasonDisabled      = "disabled"               // provider/endpoint switched off by an operator
	ReasonMaintenance   = "maintenance"            // provider/endpoint in maintenance
	ReasonTooLarge      = "estimate_exceeds_limit" // the estimate alone exceeds tokens per minute: never grantable
	ReasonJobNotHeld    = "job_not_held"           // the job is not processing under this lease any more
	ReasonBlocked       = "blocked"                // the vendor answered 429: blocked for every worker until RetryAfter
	ReasonConcurrency   = "concurrency"            // every concurrent slot is taken
	ReasonRequests      = "requests"               // requests per window used up
	ReasonTokens        = "tokens"                 // tokens per window used up
	ReasonVendor429     = "vendor_429"             // not a refusal: counts report_api_rate_limited calls
	KeepEstimate        = -1                       // Release: keep the estimate as the charged token count
	defaultMinBackoff   = 50 * time.Millisecond
	defaultMaxBackoff   = 2 * time.Second
	maxHoldSeconds      = 86400
	defaultMaxWaitConfg = "ratelimit.max_wait_seconds"
)

// Request asks for capacity for one vendor call.
type Request struct {
	Provider        string
	Endpoint        string
	EstimatedTokens int
	// JobID ties the hold to a job: it ends by itself when the job
	// completes, fails, is rescheduled, released, cancelled or reclaimed, and
	// the job's heartbeat keeps it alive. Optional.
	JobID string
	// LeaseToken is the job's current lease token (fencing); optional with JobID.
	LeaseToken string
	// Hold is the hold's lease: without release (a crash) the capacity
	// returns after this long. 0 uses the ratelimit.hold_seconds setting.
	// Rounded up to whole seconds.
	Hold time.Duration
}

// Remaining is what is left after a grant.
type Remaining struct {
	Requests    int  `json:"requests"`
	Tokens      *int `json:"tokens"` // nil: tokens are not limited
	Concurrency int  `json:"concurrency"`
}

// Grant is the answer to Acquire.
type Grant struct {
	Granted   bool
	HoldID    string
	ExpiresAt time.Time
	// RetryAfter (refused): ask again after this long. 0 means waiting does
	// not help (disabled, maintenance, estimate too large, job not held).
	RetryAfter time.Duration
	Reason     string
	Remaining  *Remaining
}

// Permanent reports a refusal that no retry of the same request can turn
// into a grant: the estimate exceeds the tokens-per-minute limit, or the job
// is no longer held by the caller.
func (g Grant) Permanent() bool {
	return !g.Granted && (g.Reason == ReasonTooLarge || g.Reason == ReasonJobNotHeld)
}

// Retryable reports a refusal that clears by itself after RetryAfter.
func (g Grant) Retryable() bool { return !g.Granted && g.RetryAfter > 0 }

// RescheduleAfter is how long to put the job back for: RetryAfter when the
// server gave one, else fallback (e.g. queue.backpressure_delay_seconds,
// for disabled/maintenance providers).
func (g Grant) RescheduleAfter(fallback time.Duration) time.Duration {
	if g.RetryAfter > 0 {
		return g.RetryAfter
	}
	return fallback
}

type grantJSON struct {
	Granted      bool       `json:"granted"`
	HoldID       *string    `json:"hold_id"`
	ExpiresAt    *time.Time `json:"expires_at"`
	RetryAfterMS *int64     `json:"retry_after_ms"`
	Reason       *string    `json:"reason"`
	Remaining    *Remaining `json:"remaining"`
}

func nullStr(s string) any {
	if s == "" {
		return nil
	}
	return s
}

// holdSeconds converts a hold lease to whole seconds (nil = server default).
func holdSeconds(d time.Duration) (any, error) {
	if d == 0 {
		return nil, nil
	}
	if d < 0 || d > maxHoldSeconds*time.Second {
		return nil, fmt.Errorf("hold must be between 1s and %ds, got %s", maxHoldSeconds, d)
	}
	return int(math.Ceil(d.Seconds())), nil
}

// Acquire asks once for capacity. A refusal is not an error: Grant.Granted
// is false and Reason/RetryAfter say why and for how long. Errors are bad
// input (unknown provider/endpoint or job: SQLSTATE 22023) or database
// failures.
func Acquire(ctx context.Context, q db.DB, r Request) (Grant, error) {
	hs, err := holdSeconds(r.Hold)
	if err != nil {
		return Grant{}, err
	}
	if r.LeaseToken != "" && r.JobID == "" {
		return Grant{}, errors.New("a lease token needs a job id")
	}
	var raw []byte
	err = q.QueryRow(ctx, `SELECT public.acquire_api_capacity_v2($1, $2, $3, $4::uuid, $5::uuid, $6)`,
		r.Provider, r.Endpoint, r.EstimatedTokens, nullStr(r.JobID), nullStr(r.LeaseToken), hs).Scan(&raw)
	if err != nil {
		return Grant{}, db.Explain(err)
	}
	return parseGrant(raw)
}

func parseGrant(raw []byte) (Grant, error) {
	var j grantJSON
	if err := json.Unmarshal(raw, &j); err != nil {
		return Grant{}, fmt.Errorf("acquire_api_capacity_v2: unexpected answer: %w", err)
	}
	g := Grant{Granted: j.Granted, Remaining: j.Remaining}
	if j.HoldID != nil {
		g.HoldID = *j.HoldID
	}
	if j.ExpiresAt != nil {
		g.ExpiresAt = *j.ExpiresAt
	}
	if j.RetryAfterMS != nil {
		g.RetryAfter = time.Duration(*j.RetryAfterMS) * time.Millisecond
	}
	if j.Reason != nil {
		g.Reason = *j.Reason
	}
	return g, nil
}

// Released is the answer to Release.
type Released struct {
	HoldID string `json:"hold_id"`
	// Released: a live hold was ended now (false when it had already expired,
	// been swept with its job, or been released before).
	Released bool `json:"released"`
	// Corrected: the window is now charged the actual token count.
	Corrected bool `json:"corrected"`
}

// Release ends a hold and charges the window actualTokens instead of the
// estimate (KeepEstimate keeps the estimate). Releasing twice, or after the
// hold expired, is harmless; the token correction applies once.
func Release(ctx context.Context, q db.DB, holdID string, actualTokens int) (Released, error) {
	var actual any
	if actualTokens >= 0 {
		actual = actualTokens
	}
	var raw []byte
	if err := q.QueryRow(ctx, `SELECT public.release_api_capacity_v2($1::uuid, $2)`, holdID, actual).Scan(&raw); err != nil {
		return Released{}, db.Explain(err)
	}
	var out Released
	if err := json.Unmarshal(raw, &out); err != nil {
		return Released{}, fmt.Errorf("release_api_capacity_v2: unexpected answer: %w", err)
	}
	return out, nil
}

// Extend renews the lease of holds used by long calls (each gets at least d
// from now; 0 renews each by its own lease). It returns the ids no longer
// held (released, expired, or their job's lease was lost). Job-tied holds
// are also renewed by the job heartbeat, so workers rarely need this.
func Extend(ctx context.Context, q db.DB, holdIDs []string, d time.Duration) ([]string, error) {
	hs, err := holdSeconds(d)
	if err != nil {
		return nil, err
	}
	rows, err := q.Query(ctx, `SELECT x::text FROM public.extend_api_capacity($1::uuid[], $2) x`, holdIDs, hs)
	if err != nil {
		return nil, db.Explain(err)
	}
	defer rows.Close()
	var lost []string
	for rows.Next() {
		var id string
		if err := rows.Scan(&id); err != nil {
			return nil, err
		}
		lost = append(lost, id)
	}
	return lost, db.Explain(rows.Err())
}

// ReportRateLimited records a vendor 429: the provider/endpoint is blocked
// for every worker for retryAfter (0: ratelimit.default_pushback_seconds).
// It returns when the block ends (an existing longer block is kept).
func ReportRateLimited(ctx context.Context, q db.DB, provider, endpoint string, retryAfter time.Duration) (time.Time, error) {
	var secs any
	if retryAfter > 0 {
		secs = retryAfter.Seconds()
	} else if retryAfter < 0 {
		return time.Time{}, fmt.Errorf("retry-after must not be negative, got %s", retryAfter)
	}
	var raw []byte
	if err := q.QueryRow(ctx, `SELECT public.report_api_rate_limited($1, $2, $3::numeric)`, provider, endpoint, secs).Scan(&raw); err != nil {
		return time.Time{}, db.Explain(err)
	}
	var out struct {
		BlockedUntil time.Time `json:"blocked_until"`
	}
	if err := json.Unmarshal(raw, &out); err != nil {
		return time.Time{}, fmt.Errorf("report_api_rate_limited: unexpected answer: %w", err)
	}
	return out.BlockedUntil, nil
}

// WaitPolicy says how long a worker may wait for capacity before handing the
// job back (reschedule, no attempt consumed).
type WaitPolicy struct {
	// MaxWait is the total time AcquireWait may spend waiting; 0 never waits.
	MaxWait time.Duration
	// MinBackoff/MaxBackoff bound the polling delay when the server gives
	// only a hint (concurrency). Defaults 50ms and 2s.
	MinBackoff time.Duration
	MaxBackoff time.Duration
}

// LoadWaitPolicy reads ratelimit.max_wait_seconds (default 10 s).
func LoadWaitPolicy(ctx context.Context, q db.DB) (WaitPolicy, error) {
	s, err := sysconfig.Int(ctx, q, defaultMaxWaitConfg, 10)
	if err != nil {
		return WaitPolicy{}, err
	}
	return WaitPolicy{MaxWait: time.Duration(s) * time.Second}, nil
}

// sleep waits d or until ctx ends.
var sleep = func(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}

// AcquireWait asks for capacity and, while refused with a retry-after that
// still fits in p.MaxWait, waits and asks again: exactly RetryAfter (plus a
// little jitter) for window and vendor limits, an exponential backoff capped
// by RetryAfter for concurrency. It returns the grant, or the last refusal
// as soon as waiting cannot help or would overrun MaxWait; the caller then
// reschedules the job by Grant.RescheduleAfter (or fails it when Permanent).
func AcquireWait(ctx context.Context, q db.DB, r Request, p WaitPolicy) (Grant, error) {
	if p.MinBackoff <= 0 {
		p.MinBackoff = defaultMinBackoff
	}
	if p.MaxBackoff < p.MinBackoff {
		p.MaxBackoff = max(defaultMaxBackoff, p.MinBackoff)
	}
	deadline := time.Now().Add(p.MaxWait)
	backoff := p.MinBackoff
	for {
		g, err := Acquire(ctx, q, r)
		if err != nil || g.Granted || !g.Retryable() {
			return g, err
		}
		d := g.RetryAfter
		if g.Reason == ReasonConcurrency {
			d = min(backoff, g.RetryAfter, p.MaxBackoff)
			backoff = min(backoff*2, p.MaxBackoff)
		}
		// Up to 10% jitter so that waiters do not return in lockstep.
		d += time.Duration(rand.Int64N(int64(d)/10 + 1))
		if time.Until(deadline) < d {
			return g, nil
		}
		if err := sleep(ctx, d); err != nil {
			return g, err
		}
	}
}

// ParseTarget splits "provider/endpoint".
func ParseTarget(s string) (provider, endpoint string, err error) {
	p, e, ok := strings.Cut(s, "/")
	if !ok || p == "" || e == "" || strings.Contains(e, "/") {
		return "", "", fmt.Errorf("expected PROVIDER/ENDPOINT (e.g. openai/gpt-4o-mini), got %q", s)
	}
	return p, e, nil
}
