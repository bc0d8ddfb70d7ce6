package worker

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/v3ctl/v3ctl/internal/db"
	"github.com/v3ctl/v3ctl/internal/handlers"
	"github.com/v3ctl/v3ctl/internal/sysconfig"
)

// sqlCapacity is the openai handler's vendor capacity gate, backed by the
// ratelimit migration (00003): acquire_api_capacity_v2 tied to the job's
// lease (the hold ends by itself when the job completes, fails, is
// rescheduled, released or reclaimed), release_api_capacity_v2 with the
// actual token count, and report_api_rate_limited so a vendor's 429 pauses
// every worker. Without v2 it falls back to the app's original
// acquire_api_capacity/release_api_capacity; without either, calls are not
// gated (and the worker logs it once).
type sqlCapacity struct {
	w        *Worker
	mu       sync.Mutex
	detected bool
	mode     string // v2 | legacy | none
	rep      bool

	waitMu   sync.Mutex
	wait     time.Duration // ratelimit.max_wait_seconds, cached
	waitRead time.Time
}

func (c *sqlCapacity) detect(ctx context.Context) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.detected {
		return
	}
	var v2, legacy, rep bool
	err := c.w.retryDB(ctx, "read schema", func(cc context.Context) error {
		return c.w.pool.QueryRow(cc, `SELECT
			to_regprocedure('public.acquire_api_capacity_v2(text,text,integer,uuid,uuid,integer)') IS NOT NULL,
			to_regprocedure('public.acquire_api_capacity(text,text,integer)') IS NOT NULL,
			to_regprocedure('public.report_api_rate_limited(text,text,numeric)') IS NOT NULL`).Scan(&v2, &legacy, &rep)
	})
	if err != nil {
		c.mode = "none" // not known yet: ungated this once, asked again next call
		return
	}
	c.detected = true
	switch {
	case v2:
		c.mode, c.rep = "v2", rep
	case legacy:
		c.mode, c.rep = "legacy", false
	default:
		c.mode = "none"
		c.w.log.Warn("no vendor capacity functions in the schema (migration 00003): AI calls are not rate limited by the database")
	}
}

// MaxWait is ratelimit.max_wait_seconds (read at most once a minute): how
// long a handler without its own capacity_wait waits for vendor capacity
// before it hands the job back.
func (c *sqlCapacity) MaxWait(ctx context.Context) (time.Duration, bool) {
	c.waitMu.Lock()
	defer c.waitMu.Unlock()
	if !c.waitRead.IsZero() && time.Since(c.waitRead) < time.Minute {
		return c.wait, true
	}
	n, err := sysconfig.Int(ctx, c.w.pool, "ratelimit.max_wait_seconds", -1)
	if err != nil || n < 0 {
		return c.wait, !c.waitRead.IsZero()
	}
	c.wait, c.waitRead = time.Duration(n)*time.Second, time.Now()
	return c.wait, true
}

func (c *sqlCapacity) Acquire(ctx context.Context, r handlers.CapacityRequest) (string, time.Duration, error) {
	c.detect(ctx)
	switch c.mode {
	case "v2":
		var raw []byte
		err := c.w.pool.QueryRow(ctx, `SELECT public.acquire_api_capacity_v2($1, $2, $3, $4::uuid, $5::uuid)`,
			r.Provider, r.Endpoint, r.EstimatedTokens, nullStr(r.JobID), nullStr(r.LeaseToken)).Scan(&raw)
		if err != nil {
			return "", 0, capacityErr(err)
		}
		var a struct {
			Granted      bool    `json:"granted"`
			HoldID       string  `json:"hold_id"`
			RetryAfterMS *int64  `json:"retry_after_ms"`
			Reason       *string `json:"reason"`
		}
		if err := json.Unmarshal(raw, &a); err != nil {
			return "", 0, fmt.Errorf("acquire_api_capacity_v2 answer: %w", err)
		}
		if a.Granted {
			return "v2:" + a.HoldID, 0, nil
		}
		reason := ""
		if a.Reason != nil {
			reason = *a.Reason
		}
		if a.RetryAfterMS != nil {
			return "", time.Duration(*a.RetryAfterMS) * time.Millisecond, nil
		}
		switch reason {
		case "estimate_exceeds_limit":
			return "", 0, handlers.Permanent(fmt.Errorf("%s/%s: the job's token estimate %d exceeds the vendor limit", r.Provider, r.Endpoint, r.EstimatedTokens))
		case "job_not_held":
			return "", 0, handlers.Retryable(errors.New("capacity refused: the job's lease is no longer held"))
		default: // disabled, maintenance: waiting here cannot help; come back later
			return "", 0, handlers.RateLimited(time.Minute, fmt.Errorf("%s/%s capacity refused: %s", r.Provider, r.Endpoint, reason))
		}
	case "legacy":
		var ok bool
		if err := c.w.pool.QueryRow(ctx, `SELECT public.acquire_api_capacity($1, $2, $3)`, r.Provider, r.Endpoint, r.EstimatedTokens).Scan(&ok); err != nil {
			return "", 0, capacityErr(err)
		}
		if !ok {
			return "", 0, nil
		}
		return "legacy:" + strconv.Itoa(r.EstimatedTokens) + ":" + r.Provider + "\x00" + r.Endpoint, 0, nil
	}
	return "none", 0, nil
}

func (c *sqlCapacity) Release(ctx context.Context, hold string, actual int) error {
	switch {
	case strings.HasPrefix(hold, "v2:"):
		_, err := c.w.pool.Exec(ctx, `SELECT public.release_api_capacity_v2($1::uuid, $2)`, strings.TrimPrefix(hold, "v2:"), actual)
		return err
	case strings.HasPrefix(hold, "legacy:"):
		rest := strings.TrimPrefix(hold, "legacy:")
		estS, pe, _ := strings.Cut(rest, ":")
		prov, ep, _ := strings.Cut(pe, "\x00")
		est, _ := strconv.Atoi(estS)
		_, err := c.w.pool.Exec(ctx, `SELECT public.release_api_capacity($1, $2, $3, $4)`, prov, ep, est, actual)
		return err
	}
	return nil
}

func (c *sqlCapacity) ReportRateLimited(ctx context.Context, provider, endpoint string, d time.Duration) {
	c.detect(ctx)
	if !c.rep {
		return
	}
	_, _ = c.w.pool.Exec(ctx, `SELECT public.report_api_rate_limited($1, $2, $3::numeric)`, provider, endpoint, d.Seconds())
}

func capacityErr(err error) error {
	if Transient(err) {
		return err
	}
	// An unknown provider/endpoint or bad input: the configuration is wrong.
	return handlers.Permanent(db.Explain(err))
}

func nullStr(s string) any {
	if s == "" {
		return nil
	}
	return s
}
