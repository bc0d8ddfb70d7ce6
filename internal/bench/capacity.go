package bench

import (
	"context"
	"errors"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
)

// CapacityOptions configure the vendor-capacity workload.
type CapacityOptions struct {
	Callers  int           `json:"callers"`
	Duration time.Duration `json:"-"`
}

// CapacityResult is acquire+release pairs per second.
type CapacityResult struct {
	Rate
}

// UsageOptions configure the usage-event workload.
type UsageOptions struct {
	Events  int `json:"events"`
	Workers int `json:"workers"`
}

// UsageResult is idempotent usage events per second.
type UsageResult struct {
	Rate
}

var errNotYet = errors.New("not available yet in this build")

// Capacity runs acquire+release pairs from o.Callers concurrent callers.
func Capacity(ctx context.Context, pool *pgxpool.Pool, o CapacityOptions) (CapacityResult, error) {
	return CapacityResult{}, errNotYet
}

// Usage records idempotent usage events.
func Usage(ctx context.Context, pool *pgxpool.Pool, o UsageOptions) (UsageResult, error) {
	return UsageResult{}, errNotYet
}
