package worker

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/v3ctl/v3ctl/internal/handlers"
	"github.com/v3ctl/v3ctl/internal/queue"
)

// Built-in job types every worker can run without configuration.
const (
	TypeSystemMaintenance = "system_maintenance"
	TypeAuditCleanup      = "audit_cleanup"
)

// Config is a worker's configuration (viper keys worker.*).
type Config struct {
	// DatabaseURL is used for the dedicated LISTEN connection; the pool is
	// opened from it too when Pool is nil.
	DatabaseURL string
	WorkerID    string
	Concurrency int
	// Types to claim; empty means every type with a handler (configured or
	// built in).
	Types []string
	// Lanes to claim; empty means any lane.
	Lanes []string
	// PollInterval is the fallback poll when no NOTIFY arrives.
	PollInterval time.Duration
	// ShutdownGrace is how long running jobs may finish after a stop signal.
	ShutdownGrace time.Duration
	// HeartbeatInterval: 0 reads worker.heartbeat_interval_seconds.
	HeartbeatInterval time.Duration
	// ReclaimInterval: how often this worker runs reclaim_timed_out_jobs
	// (negative disables; 0 means 30s).
	ReclaimInterval time.Duration
	// MetricsAddr serves /metrics, /healthz, /readyz ("" disables).
	MetricsAddr string
	// ExitWhenIdle, when positive, stops the worker (Run returns nil) once
	// no job has been running and none could be claimed for this long: a
	// batch runner that drains the queue and exits. Jobs scheduled further
	// ahead than that (a long retry backoff, a delayed job) stay pending.
	ExitWhenIdle time.Duration
	// Handlers per job type.
	Handlers map[string]handlers.Spec
	// DisableBuiltins turns off the system_maintenance and audit_cleanup
	// handlers.
	DisableBuiltins bool
	Logger          *slog.Logger
}

// DefaultWorkerID is host-pid.
func DefaultWorkerID() string {
	h, err := os.Hostname()
	if err != nil || h == "" {
		h = "worker"
	}
	return fmt.Sprintf("%s-%d", h, os.Getpid())
}

func (c *Config) setDefaults() {
	if c.WorkerID == "" {
		c.WorkerID = DefaultWorkerID()
	}
	if c.Concurrency <= 0 {
		c.Concurrency = 4
	}
	if c.PollInterval <= 0 {
		c.PollInterval = 2 * time.Second
	}
	if c.ShutdownGrace <= 0 {
		c.ShutdownGrace = 30 * time.Second
	}
	if c.ReclaimInterval == 0 {
		c.ReclaimInterval = 30 * time.Second
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.NewTextHandler(os.Stderr, nil))
	}
}

// Validate checks the configuration without touching the database.
func (c *Config) Validate() error {
	var errs []error
	if c.Concurrency < 0 || c.Concurrency > 1000 {
		errs = append(errs, fmt.Errorf("concurrency %d is out of range: use 1..1000", c.Concurrency))
	}
	if len(c.WorkerID) > 200 {
		errs = append(errs, errors.New("worker id is longer than 200 characters"))
	}
	for jt, s := range c.Handlers {
		if !validJobType(jt) {
			errs = append(errs, fmt.Errorf("handler key %q is not a job type (lower-case letters, digits and _)", jt))
		} else if !slices.Contains(queue.JobTypes, jt) {
			errs = append(errs, fmt.Errorf("handler key %q is not a job type the queue knows (one of %s)", jt, strings.Join(queue.JobTypes, ", ")))
		}
		if s.Kind == "" {
			errs = append(errs, fmt.Errorf("handler for %s: kind is required (one of %s)", jt, strings.Join(handlers.Kinds, ", ")))
		}
	}
	for _, t := range c.Types {
		if !slices.Contains(queue.JobTypes, t) {
			errs = append(errs, fmt.Errorf("unknown job type %q in types (one of %s)", t, strings.Join(queue.JobTypes, ", ")))
		}
	}
	for _, l := range c.Lanes {
		if !slices.Contains(queue.AllLanes, l) {
			errs = append(errs, fmt.Errorf("unknown lane %q in lanes (one of %s)", l, strings.Join(queue.AllLanes, ", ")))
		}
	}
	return errors.Join(errs...)
}

func validJobType(s string) bool {
	if s == "" || len(s) > 100 {
		return false
	}
	for _, r := range s {
		if !(r >= 'a' && r <= 'z' || r >= '0' && r <= '9' || r == '_') {
			return false
		}
	}
	return true
}

// HandledTypes lists the job types this configuration can run, sorted.
func (c *Config) HandledTypes() []string {
	set := map[string]bool{}
	for jt := range c.Handlers {
		set[jt] = true
	}
	if !c.DisableBuiltins {
		set[TypeSystemMaintenance] = true
		set[TypeAuditCleanup] = true
	}
	out := make([]string, 0, len(set))
	for k := range set {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

// claimTypes resolves --types against the handlers: every requested type
// needs a handler.
func (c *Config) claimTypes() ([]string, error) {
	handled := c.HandledTypes()
	if len(c.Types) == 0 {
		if len(handled) == 0 {
			return nil, errors.New("no handlers configured: add worker.handlers.<job_type> to the config file")
		}
		return handled, nil
	}
	ok := map[string]bool{}
	for _, t := range handled {
		ok[t] = true
	}
	var missing []string
	for _, t := range c.Types {
		if !ok[t] {
			missing = append(missing, t)
		}
	}
	if len(missing) > 0 {
		return nil, &NoHandlerError{Types: missing, Handled: handled}
	}
	return c.Types, nil
}

// NoHandlerError names requested job types without a handler.
type NoHandlerError struct {
	Types, Handled []string
}

func (e *NoHandlerError) Error() string {
	return fmt.Sprintf("no handler for job type(s) %s; configured: %s (add worker.handlers.<job_type> to the config file)",
		strings.Join(e.Types, ", "), strings.Join(e.Handled, ", "))
}
