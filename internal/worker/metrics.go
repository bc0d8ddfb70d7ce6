package worker

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// Metrics are the worker's Prometheus metrics, on their own registry.
type Metrics struct {
	Registry *prometheus.Registry

	Claimed           *prometheus.CounterVec   // job_type
	Completed         *prometheus.CounterVec   // job_type
	Failed            *prometheus.CounterVec   // job_type, reason (retryable|permanent|panic)
	Rescheduled       *prometheus.CounterVec   // job_type
	Released          *prometheus.CounterVec   // job_type
	Discarded         *prometheus.CounterVec   // job_type (lease lost: result dropped)
	Duration          *prometheus.HistogramVec // job_type, outcome
	InFlight          prometheus.Gauge
	HeartbeatFailures prometheus.Counter
	LeasesLost        prometheus.Counter
	CapacityWaits     *prometheus.CounterVec // provider, endpoint
	DBErrors          *prometheus.CounterVec // op
	Maintenance       prometheus.Gauge
	Draining          prometheus.Gauge
	CompleteBatches   prometheus.Histogram // jobs completed per commit
}

// NewMetrics registers the worker metrics (plus Go and process collectors)
// on a fresh registry.
func NewMetrics() *Metrics {
	r := prometheus.NewRegistry()
	m := &Metrics{
		Registry: r,
		Claimed: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "v3_worker_jobs_claimed_total",
			Help: "Jobs claimed by this worker."}, []string{"job_type"}),
		Completed: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "v3_worker_jobs_completed_total",
			Help: "Jobs completed successfully."}, []string{"job_type"}),
		Failed: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "v3_worker_jobs_failed_total",
			Help: "Jobs that failed, by reason (retryable, permanent, panic)."}, []string{"job_type", "reason"}),
		Rescheduled: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "v3_worker_jobs_rescheduled_total",
			Help: "Jobs handed back after a rate limit (no attempt consumed)."}, []string{"job_type"}),
		Released: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "v3_worker_jobs_released_total",
			Help: "Jobs handed back unfinished at shutdown (no attempt consumed)."}, []string{"job_type"}),
		Discarded: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "v3_worker_jobs_discarded_total",
			Help: "Results dropped because the job's lease was lost."}, []string{"job_type"}),
		Duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "v3_worker_job_duration_seconds",
			Help:    "Handler run time by job type and outcome.",
			Buckets: []float64{.01, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800}}, []string{"job_type", "outcome"}),
		InFlight: prometheus.NewGauge(prometheus.GaugeOpts{Name: "v3_worker_jobs_in_flight",
			Help: "Jobs being processed now."}),
		HeartbeatFailures: prometheus.NewCounter(prometheus.CounterOpts{Name: "v3_worker_heartbeat_failures_total",
			Help: "Heartbeat statements that failed (database unreachable or error)."}),
		LeasesLost: prometheus.NewCounter(prometheus.CounterOpts{Name: "v3_worker_leases_lost_total",
			Help: "In-flight jobs whose lease was lost (reclaimed or cancelled elsewhere)."}),
		CapacityWaits: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "v3_worker_capacity_waits_total",
			Help: "Times a handler waited for vendor API capacity."}, []string{"provider", "endpoint"}),
		DBErrors: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "v3_worker_db_errors_total",
			Help: "Database calls that failed and were retried, by operation."}, []string{"op"}),
		Maintenance: prometheus.NewGauge(prometheus.GaugeOpts{Name: "v3_worker_maintenance_mode",
			Help: "1 while system.maintenance_mode stops claiming."}),
		Draining: prometheus.NewGauge(prometheus.GaugeOpts{Name: "v3_worker_draining",
			Help: "1 while the worker drains for shutdown."}),
		CompleteBatches: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "v3_worker_complete_batch_jobs",
			Help:    "Jobs completed per commit (completions of concurrent jobs share one round trip).",
			Buckets: []float64{1, 2, 4, 8, 16, 32, 64}}),
	}
	r.MustRegister(m.Claimed, m.Completed, m.Failed, m.Rescheduled, m.Released, m.Discarded, m.Duration,
		m.InFlight, m.HeartbeatFailures, m.LeasesLost, m.CapacityWaits, m.DBErrors, m.Maintenance, m.Draining, m.CompleteBatches,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}

// serveHTTP runs /metrics, /healthz and /readyz on addr until ctx ends. It
// returns the bound address (useful with ":0").
func (w *Worker) serveHTTP(ctx context.Context, addr string) (string, error) {
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(w.m.Registry, promhttp.HandlerOpts{}))
	mux.HandleFunc("/healthz", func(rw http.ResponseWriter, _ *http.Request) {
		rw.Header().Set("Content-Type", "text/plain")
		_, _ = rw.Write([]byte("ok\n"))
	})
	mux.HandleFunc("/readyz", func(rw http.ResponseWriter, _ *http.Request) {
		rw.Header().Set("Content-Type", "text/plain")
		if reason := w.notReady(); reason != "" {
			rw.WriteHeader(http.StatusServiceUnavailable)
			_, _ = rw.Write([]byte(reason + "\n"))
			return
		}
		_, _ = rw.Write([]byte("ready\n"))
	})
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return "", err
	}
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	go func() {
		<-ctx.Done()
		sctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		_ = srv.Shutdown(sctx)
	}()
	go func() {
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			w.log.Error("metrics server stopped", slog.String("error", err.Error()))
		}
	}()
	return ln.Addr().String(), nil
}
