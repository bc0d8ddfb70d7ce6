package ratelimit

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/v3ctl/v3ctl/internal/db"
)

// Statuses a provider/endpoint can have.
var Statuses = []string{"active", "disabled", "maintenance"}

// Status is the live state of one provider/endpoint (get_api_capacity_status).
type Status struct {
	Provider          string           `json:"provider" yaml:"provider"`
	Endpoint          string           `json:"endpoint" yaml:"endpoint"`
	Status            string           `json:"status" yaml:"status"`
	WindowSeconds     int              `json:"window_seconds" yaml:"window_seconds"`
	RequestsPerMinute int              `json:"requests_per_minute" yaml:"requests_per_minute"`
	RequestsUsed      int              `json:"requests_used" yaml:"requests_used"`
	TokensPerMinute   *int             `json:"tokens_per_minute" yaml:"tokens_per_minute"`
	TokensUsed        int64            `json:"tokens_used" yaml:"tokens_used"`
	Concurrency       int              `json:"concurrent_requests" yaml:"concurrent_requests"`
	InFlight          int              `json:"in_flight" yaml:"in_flight"`
	BlockedUntil      *time.Time       `json:"blocked_until" yaml:"blocked_until"`
	RefusalsLastHour  int64            `json:"refusals_last_hour" yaml:"refusals_last_hour"`
	RefusalsByReason  map[string]int64 `json:"refusals_by_reason" yaml:"refusals_by_reason"`
	Vendor429LastHour int64            `json:"vendor_429_last_hour" yaml:"vendor_429_last_hour"`
}

// Key is "provider/endpoint".
func (s Status) Key() string { return s.Provider + "/" + s.Endpoint }

// List returns the live state of every limit, of one provider (endpoint ""),
// or of one provider/endpoint (both given).
func List(ctx context.Context, q db.DB, provider, endpoint string) ([]Status, error) {
	rows, err := q.Query(ctx, `SELECT provider_name, api_endpoint, status, window_seconds,
		requests_per_minute, requests_used, tokens_per_minute, tokens_used, concurrent_requests, in_flight,
		blocked_until, refusals_last_hour, refusals_by_reason, vendor_429_last_hour
		FROM public.get_api_capacity_status($1, $2)`, nullStr(provider), nullStr(endpoint))
	if err != nil {
		return nil, db.Explain(err)
	}
	defer rows.Close()
	out := []Status{}
	for rows.Next() {
		var s Status
		var by []byte
		if err := rows.Scan(&s.Provider, &s.Endpoint, &s.Status, &s.WindowSeconds, &s.RequestsPerMinute, &s.RequestsUsed,
			&s.TokensPerMinute, &s.TokensUsed, &s.Concurrency, &s.InFlight, &s.BlockedUntil, &s.RefusalsLastHour,
			&by, &s.Vendor429LastHour); err != nil {
			return nil, err
		}
		s.RefusalsByReason = map[string]int64{}
		if err := json.Unmarshal(by, &s.RefusalsByReason); err != nil {
			return nil, err
		}
		out = append(out, s)
	}
	return out, db.Explain(rows.Err())
}

// Config is the configuration of one provider/endpoint.
type Config struct {
	Provider          string `json:"provider_name" yaml:"provider_name"`
	Endpoint          string `json:"api_endpoint" yaml:"api_endpoint"`
	RequestsPerMinute int    `json:"requests_per_minute" yaml:"requests_per_minute"`
	TokensPerMinute   *int   `json:"tokens_per_minute" yaml:"tokens_per_minute"` // nil: not limited
	Concurrency       int    `json:"concurrent_requests" yaml:"concurrent_requests"`
	Status            string `json:"status" yaml:"status"`
	WindowSeconds     int    `json:"window_seconds" yaml:"window_seconds"`
}

// Key is "provider/endpoint".
func (c Config) Key() string { return c.Provider + "/" + c.Endpoint }

var errDryRun = errors.New("dry run: rolled back")

// inTx runs fn in a transaction that is rolled back when dry is set.
func inTx(ctx context.Context, conn db.TxBeginner, dry bool, fn func(tx pgx.Tx) error) error {
	err := db.InTx(ctx, conn, func(tx pgx.Tx) error {
		if err := fn(tx); err != nil {
			return err
		}
		if dry {
			return errDryRun
		}
		return nil
	})
	if errors.Is(err, errDryRun) {
		return nil
	}
	return err
}

func callJSON(ctx context.Context, tx pgx.Tx, out any, sql string, args ...any) error {
	var raw []byte
	if err := tx.QueryRow(ctx, sql, args...).Scan(&raw); err != nil {
		return db.Explain(err)
	}
	return json.Unmarshal(raw, out)
}

// Add creates a provider/endpoint (audited). WindowSeconds 0 means 60 and
// Status "" means active.
func Add(ctx context.Context, conn db.TxBeginner, c Config, actor, reason string, dry bool) (Config, error) {
	if c.WindowSeconds == 0 {
		c.WindowSeconds = 60
	}
	if c.Status == "" {
		c.Status = "active"
	}
	var out Config
	err := inTx(ctx, conn, dry, func(tx pgx.Tx) error {
		return callJSON(ctx, tx, &out, `SELECT public.add_api_rate_limit($1, $2, $3, $4, $5, $6, $7, $8, $9)`,
			c.Provider, c.Endpoint, c.RequestsPerMinute, c.TokensPerMinute, c.Concurrency, c.Status, c.WindowSeconds,
			nullStr(actor), nullStr(reason))
	})
	return out, err
}

// Changes lists what Set changes; nil fields stay as they are.
type Changes struct {
	RequestsPerMinute *int
	TokensPerMinute   *int
	TokensUnlimited   bool // set tokens_per_minute to NULL (not limited)
	Concurrency       *int
	Status            *string
	WindowSeconds     *int
}

// Empty reports whether nothing would change.
func (c Changes) Empty() bool {
	return c.RequestsPerMinute == nil && c.TokensPerMinute == nil && !c.TokensUnlimited &&
		c.Concurrency == nil && c.Status == nil && c.WindowSeconds == nil
}

func (c Changes) json() map[string]any {
	m := map[string]any{}
	if c.RequestsPerMinute != nil {
		m["requests_per_minute"] = *c.RequestsPerMinute
	}
	if c.TokensUnlimited {
		m["tokens_per_minute"] = nil
	} else if c.TokensPerMinute != nil {
		m["tokens_per_minute"] = *c.TokensPerMinute
	}
	if c.Concurrency != nil {
		m["concurrent_requests"] = *c.Concurrency
	}
	if c.Status != nil {
		m["status"] = *c.Status
	}
	if c.WindowSeconds != nil {
		m["window_seconds"] = *c.WindowSeconds
	}
	return m
}

// Change is the result of Set.
type Change struct {
	Key     string `json:"key" yaml:"key"`
	Old     Config `json:"old" yaml:"old"`
	New     Config `json:"new" yaml:"new"`
	Changed bool   `json:"changed" yaml:"changed"`
	DryRun  bool   `json:"dry_run" yaml:"dry_run"`
}

// Set changes a provider/endpoint's limits or status (validated, audited;
// setting the current values again writes nothing).
func Set(ctx context.Context, conn db.TxBeginner, provider, endpoint string, c Changes, actor, reason string, dry bool) (Change, error) {
	if c.Empty() {
		return Change{}, errors.New("nothing to change")
	}
	b, err := json.Marshal(c.json())
	if err != nil {
		return Change{}, err
	}
	var out Change
	err = inTx(ctx, conn, dry, func(tx pgx.Tx) error {
		return callJSON(ctx, tx, &out, `SELECT public.set_api_rate_limit($1, $2, $3::jsonb, $4, $5)`,
			provider, endpoint, string(b), nullStr(actor), nullStr(reason))
	})
	out.DryRun = dry
	return out, err
}

// Removed is the result of Remove.
type Removed struct {
	Removed  Config `json:"removed" yaml:"removed"`
	InFlight int    `json:"in_flight" yaml:"in_flight"`
	DryRun   bool   `json:"dry_run" yaml:"dry_run"`
}

// Remove deletes a provider/endpoint with its holds, ledger and refusal
// counts (audited). Calls in flight lose their holds.
func Remove(ctx context.Context, conn db.TxBeginner, provider, endpoint, actor, reason string, dry bool) (Removed, error) {
	var out Removed
	err := inTx(ctx, conn, dry, func(tx pgx.Tx) error {
		return callJSON(ctx, tx, &out, `SELECT public.remove_api_rate_limit($1, $2, $3, $4)`,
			provider, endpoint, nullStr(actor), nullStr(reason))
	})
	out.DryRun = dry
	return out, err
}

// ResetResult is the result of Reset.
type ResetResult struct {
	Reset        []string `json:"reset" yaml:"reset"`
	HoldsCleared int      `json:"holds_cleared" yaml:"holds_cleared"`
	GrantsClear  int      `json:"grants_cleared" yaml:"grants_cleared"`
	Unblocked    int      `json:"unblocked" yaml:"unblocked"`
	DryRun       bool     `json:"dry_run" yaml:"dry_run"`
}

// Reset clears the holds, window ledger and vendor block of one
// provider/endpoint, or of all endpoints of a provider (endpoint ""). Audited.
func Reset(ctx context.Context, conn db.TxBeginner, provider, endpoint, actor, reason string, dry bool) (ResetResult, error) {
	var out ResetResult
	err := inTx(ctx, conn, dry, func(tx pgx.Tx) error {
		return callJSON(ctx, tx, &out, `SELECT public.reset_api_rate_limit($1, $2, $3, $4)`,
			provider, nullStr(endpoint), nullStr(actor), nullStr(reason))
	})
	out.DryRun = dry
	return out, err
}

// Get returns one provider/endpoint's configuration.
func Get(ctx context.Context, q db.DB, provider, endpoint string) (Config, error) {
	var c Config
	err := q.QueryRow(ctx, `SELECT provider_name, api_endpoint, requests_per_minute, tokens_per_minute,
		concurrent_requests, status, window_seconds FROM public.api_rate_limits
		WHERE provider_name = $1 AND api_endpoint = $2`, provider, endpoint).Scan(
		&c.Provider, &c.Endpoint, &c.RequestsPerMinute, &c.TokensPerMinute, &c.Concurrency, &c.Status, &c.WindowSeconds)
	if errors.Is(err, pgx.ErrNoRows) {
		return c, fmt.Errorf("unknown provider/endpoint %s/%s", provider, endpoint)
	}
	return c, db.Explain(err)
}
