package cli

import (
	"fmt"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/spf13/cobra"

	"github.com/v3ctl/v3ctl/internal/bench"
)

func init() { Register(newBenchCmd) }

func newBenchCmd(a *App) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "bench",
		Short: "Measure the queue, vendor capacity and usage metering against a dev or throwaway database",
		Long: `bench runs v3ctl's own workloads against a database and prints what it measured.
The workloads write and churn many rows (jobs, capacity slots, usage events),
so bench refuses any database but a dev or throwaway one unless --yes: the
private dev/bench/test instances (127.0.0.1 on their port) and, on this
machine, databases whose name starts with v3ctl_ or bench are allowed.

Jobs it enqueues are of type system_maintenance with job_name "v3ctl-bench"
(and are purged afterwards); nothing else in the queue is claimed. What stays
behind: "bench usage" adds accounts named v3ctl-bench-N@bench.invalid and
their usage events (the ledger is append-only), "bench capacity" a
v3ctl-bench/noop rate limit, and audit rows of every workload.

The side-by-side comparison with River and the physical limit lives in the
bench/ module: make bench.`,
		Example: `  v3ctl dev up && v3ctl migrate up
  v3ctl bench queue --jobs 20000 --workers 16
  v3ctl bench pickup --samples 300 -o json
  v3ctl bench claim --large            # 10k and 1M pending (takes minutes)
  v3ctl bench capacity --callers 64
  v3ctl bench usage --events 20000
  v3ctl bench physical                 # the server's single-row update rate`,
	}
	// guard resolves the database and refuses a non-throwaway one unless --yes.
	guard := func(c *cobra.Command) error {
		u, err := a.URL(c.Context())
		if err != nil {
			return err
		}
		ok, why := bench.Throwaway(c.Context(), u)
		if ok {
			if a.Verbose() > 0 {
				a.Infof("benchmarking %s", why)
			}
			return nil
		}
		if a.Yes() {
			a.Infof("warning: %s; going ahead because of --yes", why)
			return nil
		}
		return UsageErrorf("refusing to benchmark: %s. Benchmarks write and churn many rows; use the dev database (v3ctl dev up), a database named v3ctl_* or bench*, or pass --yes", why)
	}
	cmd.AddCommand(
		newBenchQueueCmd(a, guard),
		newBenchPickupCmd(a, guard),
		newBenchClaimCmd(a, guard),
		newBenchCapacityCmd(a, guard),
		newBenchUsageCmd(a, guard),
		newBenchPhysicalCmd(a, guard),
	)
	return cmd
}

type benchGuard func(*cobra.Command) error

func rateRow(name string, r bench.Rate) []string {
	return []string{name, fmt.Sprintf("%.0f", r.PerSecond), fmt.Sprint(r.Ops), fmt.Sprintf("%.2f", r.Seconds), fmt.Sprint(r.Concurrent)}
}

var rateHeaders = []string{"WORKLOAD", "PER SECOND", "OPS", "SECONDS", "CONCURRENCY"}

func latencyRow(name string, l bench.Latency) []string {
	f := func(v float64) string { return fmt.Sprintf("%.2f", v) }
	return []string{name, fmt.Sprint(l.Samples), f(l.P50), f(l.P95), f(l.P99), f(l.Max)}
}

var latencyHeaders = []string{"WORKLOAD", "SAMPLES", "P50 MS", "P95 MS", "P99 MS", "MAX MS"}

func positive(flag string, v int) error {
	if v <= 0 {
		return UsageErrorf("--%s must be a positive number, got %d", flag, v)
	}
	return nil
}

func newBenchQueueCmd(a *App, guard benchGuard) *cobra.Command {
	var o bench.DrainOptions
	c := &cobra.Command{
		Use:   "queue",
		Short: "Queue drain: pre-insert N jobs, drain them with M workers running a no-op handler; jobs/s",
		Args:  cobra.NoArgs,
		Example: `  v3ctl bench queue
  v3ctl bench queue --jobs 50000 --workers 32 -o json
  v3ctl bench queue --mode batch --batch 32`,
		RunE: func(c *cobra.Command, _ []string) error {
			if err := positive("jobs", o.Jobs); err != nil {
				return err
			}
			if err := positive("workers", o.Workers); err != nil {
				return err
			}
			if err := oneOf("mode", o.Mode, bench.Modes); err != nil {
				return err
			}
			pool, err := benchPool(a, c, guard, o.Workers+4)
			if err != nil {
				return err
			}
			a.Infof("draining %d jobs with %d workers...", o.Jobs, o.Workers)
			r, err := bench.Drain(c.Context(), pool, o)
			if err != nil {
				return err
			}
			return a.Printer().Print(r, rateHeaders, [][]string{rateRow("queue drain (jobs)", r.Rate)})
		},
	}
	c.Flags().IntVar(&o.Jobs, "jobs", 20000, "jobs to pre-insert and drain")
	c.Flags().IntVar(&o.Workers, "workers", 16, "concurrent handlers")
	c.Flags().StringVar(&o.Mode, "mode", bench.ModeWorker, "worker: the real worker loop (as v3ctl worker run); batch: bare claim-batch + batch-complete loops")
	c.Flags().IntVar(&o.Batch, "batch", 8, "jobs per claim in --mode batch")
	return c
}

func newBenchPickupCmd(a *App, guard benchGuard) *cobra.Command {
	var o bench.PickupOptions
	c := &cobra.Command{
		Use:     "pickup",
		Short:   "Pickup latency: enqueue -> handler start on an idle worker; p50/p95/p99",
		Args:    cobra.NoArgs,
		Example: `  v3ctl bench pickup --samples 300`,
		RunE: func(c *cobra.Command, _ []string) error {
			if err := positive("samples", o.Samples); err != nil {
				return err
			}
			if err := positive("workers", o.Workers); err != nil {
				return err
			}
			if err := oneOf("mode", o.Mode, bench.Modes); err != nil {
				return err
			}
			pool, err := benchPool(a, c, guard, o.Workers+4)
			if err != nil {
				return err
			}
			a.Infof("measuring pickup latency over %d jobs...", o.Samples)
			l, err := bench.Pickup(c.Context(), pool, o)
			if err != nil {
				return err
			}
			return a.Printer().Print(l, latencyHeaders, [][]string{latencyRow("pickup", l)})
		},
	}
	c.Flags().IntVar(&o.Samples, "samples", 300, "jobs enqueued one at a time")
	c.Flags().IntVar(&o.Workers, "workers", 16, "idle handlers waiting")
	c.Flags().StringVar(&o.Mode, "mode", bench.ModeWorker, "worker: the real worker loop; batch: bare listening claimers")
	return c
}

func newBenchClaimCmd(a *App, guard benchGuard) *cobra.Command {
	var samples int
	var large bool
	var depths []int
	c := &cobra.Command{
		Use:   "claim",
		Short: "Claim latency with 10k (and with --large 1M) pending jobs",
		Long: `claim fills the queue with pending jobs (bench jobs only), then times single
claims followed by their completion. A claim must cost the same whether 10k or
1M jobs wait.`,
		Args: cobra.NoArgs,
		Example: `  v3ctl bench claim
  v3ctl bench claim --large -o json
  v3ctl bench claim --pending 10000,100000`,
		RunE: func(c *cobra.Command, _ []string) error {
			if err := positive("samples", samples); err != nil {
				return err
			}
			if !c.Flags().Changed("pending") {
				depths = []int{10_000}
				if large {
					depths = append(depths, 1_000_000)
				}
			}
			for _, d := range depths {
				if err := positive("pending", d); err != nil {
					return err
				}
			}
			pool, err := benchPool(a, c, guard, 4)
			if err != nil {
				return err
			}
			var res []bench.ClaimLatency
			var rows [][]string
			for _, d := range depths {
				a.Infof("claim latency at %d pending...", d)
				r, err := bench.ClaimAtDepth(c.Context(), pool, bench.ClaimOptions{Pending: d, Samples: samples})
				if err != nil {
					return err
				}
				res = append(res, r)
				rows = append(rows, latencyRow(fmt.Sprintf("claim at %d pending", d), r.Latency))
			}
			return a.Printer().Print(res, latencyHeaders, rows)
		},
	}
	c.Flags().IntVar(&samples, "samples", 200, "claims timed at each depth")
	c.Flags().BoolVar(&large, "large", false, "also measure at 1,000,000 pending (inserting them takes a few minutes)")
	c.Flags().IntSliceVar(&depths, "pending", nil, "explicit depths (overrides --large)")
	return c
}

func newBenchCapacityCmd(a *App, guard benchGuard) *cobra.Command {
	var o bench.CapacityOptions
	c := &cobra.Command{
		Use:     "capacity",
		Short:   "Vendor capacity: acquire+release pairs/s with many concurrent callers",
		Args:    cobra.NoArgs,
		Example: `  v3ctl bench capacity --callers 64 --duration 5s`,
		RunE: func(c *cobra.Command, _ []string) error {
			if err := positive("callers", o.Callers); err != nil {
				return err
			}
			if o.Duration <= 0 {
				return UsageErrorf("--duration must be positive, got %s", o.Duration)
			}
			pool, err := benchPool(a, c, guard, o.Callers+4)
			if err != nil {
				return err
			}
			a.Infof("acquire+release with %d callers for %s...", o.Callers, o.Duration)
			r, err := bench.Capacity(c.Context(), pool, o)
			if err != nil {
				return err
			}
			return a.Printer().Print(r, rateHeaders, [][]string{rateRow("capacity (acquire+release pairs)", r.Rate)})
		},
	}
	c.Flags().IntVar(&o.Callers, "callers", 64, "concurrent callers")
	c.Flags().DurationVar(&o.Duration, "duration", 5*time.Second, "how long to run")
	return c
}

func newBenchUsageCmd(a *App, guard benchGuard) *cobra.Command {
	var o bench.UsageOptions
	c := &cobra.Command{
		Use:     "usage",
		Short:   "Usage metering: idempotent usage events/s",
		Args:    cobra.NoArgs,
		Example: `  v3ctl bench usage --events 20000 --workers 16`,
		RunE: func(c *cobra.Command, _ []string) error {
			if err := positive("events", o.Events); err != nil {
				return err
			}
			if err := positive("workers", o.Workers); err != nil {
				return err
			}
			pool, err := benchPool(a, c, guard, o.Workers+4)
			if err != nil {
				return err
			}
			a.Infof("recording %d usage events with %d workers...", o.Events, o.Workers)
			r, err := bench.Usage(c.Context(), pool, o)
			if err != nil {
				return err
			}
			return a.Printer().Print(r, rateHeaders, [][]string{rateRow("usage events", r.Rate)})
		},
	}
	c.Flags().IntVar(&o.Events, "events", 20000, "events to record (each sent twice: the repeat must be a no-op)")
	c.Flags().IntVar(&o.Workers, "workers", 16, "concurrent callers")
	return c
}

func newBenchPhysicalCmd(a *App, guard benchGuard) *cobra.Command {
	var o bench.UpdateRateOptions
	c := &cobra.Command{
		Use:     "physical",
		Short:   "The server's own single-row UPDATE commit rate: the ceiling for per-job commits",
		Args:    cobra.NoArgs,
		Example: `  v3ctl bench physical --conns 16 --duration 3s`,
		RunE: func(c *cobra.Command, _ []string) error {
			if err := positive("conns", o.Conns); err != nil {
				return err
			}
			pool, err := benchPool(a, c, guard, o.Conns+4)
			if err != nil {
				return err
			}
			r, err := bench.UpdateRate(c.Context(), pool, o)
			if err != nil {
				return err
			}
			return a.Printer().Print(r, rateHeaders, [][]string{rateRow(fmt.Sprintf("single-row UPDATE commits (synchronous_commit=%s)", r.SynchronousCommit), r.Rate)})
		},
	}
	c.Flags().IntVar(&o.Conns, "conns", 16, "connections updating at once")
	c.Flags().DurationVar(&o.Duration, "duration", 3*time.Second, "how long to run")
	return c
}

// benchPool refuses a database that is not a dev or throwaway one (unless
// --yes) and opens a pool of at least conns connections.
func benchPool(a *App, c *cobra.Command, guard benchGuard, conns int) (*pgxpool.Pool, error) {
	if err := guard(c); err != nil {
		return nil, err
	}
	return a.DBConns(c.Context(), conns)
}
