// Package bench holds v3ctl's benchmark workloads: queue drain, pickup
// latency, claim latency at depth, vendor-capacity and usage-event rates, and
// the database's own single-row update rate (the physical limit every queue
// operation is bounded by). `v3ctl bench` and the bench/ comparison module
// (which adds River) both call it, so the two print the same measurement.
//
// Nothing here prints; every workload returns a result struct with json tags.
package bench

import (
	"fmt"
	"math"
	"sort"
	"time"
)

// Latency summarises a set of durations. Values are milliseconds so that the
// JSON output is readable and stable.
type Latency struct {
	Samples int     `json:"samples"`
	P50     float64 `json:"p50_ms"`
	P95     float64 `json:"p95_ms"`
	P99     float64 `json:"p99_ms"`
	Max     float64 `json:"max_ms"`
	Mean    float64 `json:"mean_ms"`
}

// Summarize computes percentiles (nearest rank) of ds. ds is sorted in place.
func Summarize(ds []time.Duration) Latency {
	if len(ds) == 0 {
		return Latency{}
	}
	sort.Slice(ds, func(i, j int) bool { return ds[i] < ds[j] })
	var sum time.Duration
	for _, d := range ds {
		sum += d
	}
	pct := func(p float64) float64 {
		rank := int(math.Ceil(p/100*float64(len(ds)))) - 1
		if rank < 0 {
			rank = 0
		}
		return ms(ds[rank])
	}
	return Latency{
		Samples: len(ds),
		P50:     pct(50),
		P95:     pct(95),
		P99:     pct(99),
		Max:     ms(ds[len(ds)-1]),
		Mean:    ms(sum / time.Duration(len(ds))),
	}
}

func ms(d time.Duration) float64 { return math.Round(float64(d)/1e3) / 1e3 }

// Rate is a throughput measurement.
type Rate struct {
	Ops        int     `json:"ops"`
	Seconds    float64 `json:"seconds"`
	PerSecond  float64 `json:"per_second"`
	Concurrent int     `json:"concurrency"`
}

// NewRate builds a Rate from a count and an elapsed time.
func NewRate(ops int, elapsed time.Duration, conc int) Rate {
	s := elapsed.Seconds()
	r := Rate{Ops: ops, Seconds: math.Round(s*1000) / 1000, Concurrent: conc}
	if s > 0 {
		r.PerSecond = math.Round(float64(ops)/s*10) / 10
	}
	return r
}

func (r Rate) String() string {
	return fmt.Sprintf("%.0f/s (%d in %.2fs, %d concurrent)", r.PerSecond, r.Ops, r.Seconds, r.Concurrent)
}
