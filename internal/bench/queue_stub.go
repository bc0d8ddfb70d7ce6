package bench

import (
	"context"
	"errors"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
)

type DrainOptions struct{ Jobs, Workers int }
type DrainResult struct{ Rate }
type PickupOptions struct{ Samples, Workers int }
type ClaimOptions struct{ Pending, Samples int }
type ClaimLatency struct {
	Pending int
	Latency Latency
}

var errNotYet = errors.New("queue not merged yet")

func Drain(ctx context.Context, pool *pgxpool.Pool, o DrainOptions) (DrainResult, error) {
	return DrainResult{}, errNotYet
}
func Pickup(ctx context.Context, pool *pgxpool.Pool, o PickupOptions) (Latency, error) {
	return Latency{}, errNotYet
}
func ClaimAtDepth(ctx context.Context, pool *pgxpool.Pool, o ClaimOptions) (ClaimLatency, error) {
	return ClaimLatency{}, errNotYet
}

type CapacityOptions struct {
	Callers  int
	Duration time.Duration
}
type CapacityResult struct{ Rate }
type UsageOptions struct{ Events, Workers int }
type UsageResult struct{ Rate }

func Capacity(ctx context.Context, pool *pgxpool.Pool, o CapacityOptions) (CapacityResult, error) {
	return CapacityResult{}, errNotYet
}
func Usage(ctx context.Context, pool *pgxpool.Pool, o UsageOptions) (UsageResult, error) {
	return UsageResult{}, errNotYet
}
