// Command bench compares v3ctl's job queue with River on the same PostgreSQL
// in the same run, next to the database's own single-row update rate.
//
// It lives in its own Go module so that River never becomes a dependency of
// v3ctl. Run it with `make bench`, or:
//
//	cd bench && go run . [-jobs 20000] [-workers 16] [-samples 300] [-large]
//
// Without V3CTL_BENCH_DATABASE_URL it starts a private PostgreSQL (devdb
// instance "bench", durable unless -fast), creates the database bench_run,
// applies v3ctl's migrations and River's own (schema "river"), and stops the
// server at the end unless -keep.
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"runtime"
	"runtime/pprof"
	"sort"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/v3ctl/v3ctl/internal/bench"
	"github.com/v3ctl/v3ctl/internal/db"
)

type options struct {
	jobs, workers, samples, rounds int
	updateConns                    int
	updateFor                      time.Duration
	fast, keep, large, jsonOut     bool
	stats, statsNested             bool
	cpuprofile                     string
	riverCooldown, riverPoll       time.Duration
	only                           string
	batch                          int
	systems                        string
}

func main() {
	var o options
	flag.IntVar(&o.jobs, "jobs", 20000, "jobs pre-inserted for each drain")
	flag.IntVar(&o.workers, "workers", 16, "concurrent handlers (both systems)")
	flag.IntVar(&o.samples, "samples", 300, "pickup latency samples (both systems)")
	flag.IntVar(&o.rounds, "rounds", 3, "drain rounds per system, interleaved; the median is reported")
	flag.IntVar(&o.updateConns, "update-conns", 0, "connections for the single-row update probe (default: -workers)")
	flag.DurationVar(&o.updateFor, "update-for", 3*time.Second, "duration of the single-row update probe")
	flag.BoolVar(&o.fast, "fast", false, "private server without durability (fsync=off, synchronous_commit=off)")
	flag.BoolVar(&o.keep, "keep", false, "leave the private server running")
	flag.BoolVar(&o.large, "large", false, "also measure claim latency at 1M pending jobs (takes a few minutes)")
	flag.BoolVar(&o.jsonOut, "json", false, "print JSON instead of a table")
	flag.BoolVar(&o.stats, "stats", true, "load pg_stat_statements (if installed) and print the top statements")
	flag.BoolVar(&o.statsNested, "stats-nested", false, "also track statements inside functions (a profile; slows v3ctl's PL/pgSQL more than River)")
	flag.StringVar(&o.cpuprofile, "cpuprofile", "", "write a CPU profile of this process (both systems' client side)")
	flag.DurationVar(&o.riverCooldown, "river-fetch-cooldown", time.Millisecond, "River FetchCooldown (default 100ms in River)")
	flag.DurationVar(&o.riverPoll, "river-fetch-poll", 50*time.Millisecond, "River FetchPollInterval (default 1s in River)")
	flag.IntVar(&o.batch, "batch", 8, "v3ctl claim batch size (jobs per claim)")
	flag.StringVar(&o.only, "only", "", "comma-separated subset of workloads: physical,drain,pickup,claim")
	flag.StringVar(&o.systems, "systems", "river,worker,batch", "comma-separated subset of systems: river, worker (v3ctl worker loop), batch (v3ctl claim batch)")
	flag.Parse()
	if o.updateConns == 0 {
		o.updateConns = o.workers
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, o); err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(1)
	}
}

func (o options) want(part string) bool { return in(o.only, part) }

func (o options) sys(name string) bool { return in(o.systems, name) }

func in(list, part string) bool {
	if list == "" {
		return true
	}
	for _, p := range strings.Split(list, ",") {
		if strings.TrimSpace(p) == part {
			return true
		}
	}
	return false
}

// Report is the whole run, printed as a table or JSON.
type Report struct {
	Machine  Machine                 `json:"machine"`
	Physical *bench.UpdateRateResult `json:"physical_limit,omitempty"`
	Drain    *Compare                `json:"drain,omitempty"`
	Pickup   *ComparePickup          `json:"pickup,omitempty"`
	Claim    []bench.ClaimLatency    `json:"claim_latency,omitempty"`
	TopSQL   []bench.Statement       `json:"top_statements,omitempty"`
}

type Machine struct {
	CPUs     int    `json:"cpus"`
	Postgres string `json:"postgres"`
	Durable  bool   `json:"durable"`
	GoVer    string `json:"go"`
	Workers  int    `json:"workers"`
	Jobs     int    `json:"jobs"`
	// LoadStart/LoadEnd are /proc/loadavg's 1-minute figure: other work on
	// the machine skews every number.
	LoadStart string `json:"load_start"`
	LoadEnd   string `json:"load_end"`
}

func loadavg() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "?"
	}
	f := strings.Fields(string(b))
	if len(f) == 0 {
		return "?"
	}
	return f[0]
}

// Compare is one workload's drain rate for River and the two v3ctl modes.
type Compare struct {
	River       bench.Rate   `json:"river"`
	V3Worker    bench.Rate   `json:"v3ctl_worker"`
	V3Batch     bench.Rate   `json:"v3ctl_batch"`
	RatioWorker float64      `json:"ratio_v3ctl_worker_over_river"`
	RatioBatch  float64      `json:"ratio_v3ctl_batch_over_river"`
	Batch       int          `json:"v3ctl_batch_size"`
	RiverRounds []bench.Rate `json:"river_rounds"`
	WorkerRound []bench.Rate `json:"v3ctl_worker_rounds"`
	BatchRounds []bench.Rate `json:"v3ctl_batch_rounds"`
}

// ComparePickup is pickup latency for River and the two v3ctl modes.
type ComparePickup struct {
	River    bench.Latency `json:"river"`
	V3Worker bench.Latency `json:"v3ctl_worker"`
	V3Batch  bench.Latency `json:"v3ctl_batch"`
}

func run(ctx context.Context, o options) error {
	if o.cpuprofile != "" {
		f, err := os.Create(o.cpuprofile)
		if err != nil {
			return err
		}
		defer f.Close()
		if err := pprof.StartCPUProfile(f); err != nil {
			return err
		}
		defer pprof.StopCPUProfile()
	}
	u := os.Getenv("V3CTL_BENCH_DATABASE_URL")
	if u == "" {
		logf("starting the private PostgreSQL (devdb instance \"bench\", durable=%v)", !o.fast)
		st, stopServer, err := bench.StartServer(ctx, bench.ServerOptions{Name: "bench", Fast: o.fast, StatStatements: o.stats, StatNested: o.statsNested})
		if err != nil {
			return err
		}
		if !o.keep {
			defer stopServer()
		}
		if u, err = bench.FreshDatabase(ctx, st.URLFor("postgres"), "bench_run"); err != nil {
			return err
		}
	} else if err := bench.Migrate(ctx, u); err != nil {
		return err
	}
	pool, err := db.Connect(ctx, u, func(c *pgxpool.Config) {
		c.MaxConns = int32(o.workers*2 + 8)
		c.ConnConfig.RuntimeParams["application_name"] = "v3ctl-bench"
	})
	if err != nil {
		return err
	}
	defer pool.Close()
	if err := riverMigrate(ctx, pool); err != nil {
		return fmt.Errorf("river migrations: %w", err)
	}
	rep := Report{Machine: Machine{CPUs: runtime.NumCPU(), GoVer: runtime.Version(), Workers: o.workers, Jobs: o.jobs, LoadStart: loadavg()}}
	var fsync string
	if err := pool.QueryRow(ctx, `SELECT current_setting('server_version'), current_setting('fsync')`).Scan(&rep.Machine.Postgres, &fsync); err != nil {
		return err
	}
	rep.Machine.Durable = fsync == "on"
	statsOn := o.stats && bench.ResetStatements(ctx, pool) == nil
	tune := riverTuning{Workers: o.workers, FetchCooldown: o.riverCooldown, FetchPollInterval: o.riverPoll}

	if o.want("physical") {
		logf("physical limit: single-row UPDATE commits, %d connections, %s", o.updateConns, o.updateFor)
		r, err := bench.UpdateRate(ctx, pool, bench.UpdateRateOptions{Conns: o.updateConns, Duration: o.updateFor})
		if err != nil {
			return fmt.Errorf("update rate: %w", err)
		}
		rep.Physical = &r
	}
	if o.want("drain") {
		c := &Compare{Batch: o.batch}
		for i := 0; i < o.rounds; i++ {
			logf("drain round %d/%d: %d jobs, %d workers", i+1, o.rounds, o.jobs, o.workers)
			if o.sys("river") {
				rr, err := riverDrain(ctx, pool, o.jobs, tune)
				if err != nil {
					return err
				}
				c.RiverRounds = append(c.RiverRounds, rr)
				logf("  River               %s", rr)
			}
			if o.sys("worker") {
				wr, err := bench.Drain(ctx, pool, bench.DrainOptions{Jobs: o.jobs, Workers: o.workers, Mode: bench.ModeWorker})
				if err != nil {
					return fmt.Errorf("v3ctl drain (worker): %w", err)
				}
				c.WorkerRound = append(c.WorkerRound, wr.Rate)
				logf("  v3ctl worker loop   %s", wr.Rate)
			}
			if o.sys("batch") {
				br, err := bench.Drain(ctx, pool, bench.DrainOptions{Jobs: o.jobs, Workers: o.workers, Mode: bench.ModeBatch, Batch: o.batch})
				if err != nil {
					return fmt.Errorf("v3ctl drain (batch): %w", err)
				}
				c.BatchRounds = append(c.BatchRounds, br.Rate)
				logf("  v3ctl claim batch   %s", br.Rate)
			}
		}
		c.River, c.V3Worker, c.V3Batch = median(c.RiverRounds), median(c.WorkerRound), median(c.BatchRounds)
		if c.River.PerSecond > 0 {
			c.RatioWorker = round2(c.V3Worker.PerSecond / c.River.PerSecond)
			c.RatioBatch = round2(c.V3Batch.PerSecond / c.River.PerSecond)
		}
		rep.Drain = c
	}
	if o.want("pickup") {
		p := &ComparePickup{}
		logf("pickup: %d samples each", o.samples)
		if o.sys("river") {
			if p.River, err = riverPickup(ctx, pool, o.samples, tune); err != nil {
				return err
			}
			logf("  River               p50 %.2f ms, p95 %.2f ms, p99 %.2f ms", p.River.P50, p.River.P95, p.River.P99)
		}
		if o.sys("worker") {
			if p.V3Worker, err = bench.Pickup(ctx, pool, bench.PickupOptions{Samples: o.samples, Workers: o.workers, Mode: bench.ModeWorker}); err != nil {
				return fmt.Errorf("v3ctl pickup (worker): %w", err)
			}
			logf("  v3ctl worker loop   p50 %.2f ms, p95 %.2f ms, p99 %.2f ms", p.V3Worker.P50, p.V3Worker.P95, p.V3Worker.P99)
		}
		if o.sys("batch") {
			if p.V3Batch, err = bench.Pickup(ctx, pool, bench.PickupOptions{Samples: o.samples, Workers: o.workers, Mode: bench.ModeBatch}); err != nil {
				return fmt.Errorf("v3ctl pickup (batch): %w", err)
			}
			logf("  v3ctl claimers      p50 %.2f ms, p95 %.2f ms, p99 %.2f ms", p.V3Batch.P50, p.V3Batch.P95, p.V3Batch.P99)
		}
		rep.Pickup = p
	}
	if o.want("claim") {
		depths := []int{10_000, 100_000}
		if o.large {
			depths = append(depths, 1_000_000)
		}
		for _, d := range depths {
			logf("claim latency at %d pending", d)
			c, err := bench.ClaimAtDepth(ctx, pool, bench.ClaimOptions{Pending: d, Samples: 200})
			if err != nil {
				return fmt.Errorf("claim latency at %d: %w", d, err)
			}
			rep.Claim = append(rep.Claim, c)
		}
	}
	if statsOn {
		rep.TopSQL, _ = bench.TopStatements(ctx, pool, 12)
	}
	rep.Machine.LoadEnd = loadavg()
	if o.jsonOut {
		enc := json.NewEncoder(os.Stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(rep)
	}
	printReport(rep)
	return nil
}

func printReport(r Report) {
	w := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
	m := r.Machine
	fmt.Fprintf(w, "machine: %d CPUs (load %s -> %s), PostgreSQL %s, durable=%v, %s; %d workers, %d jobs per drain\n\n", m.CPUs, m.LoadStart, m.LoadEnd, m.Postgres, m.Durable, m.GoVer, m.Workers, m.Jobs)
	ratio := func(v, river float64) string {
		if river <= 0 {
			return "-"
		}
		return fmt.Sprintf("%.2fx", v/river)
	}
	if d := r.Drain; d != nil {
		fmt.Fprintf(w, "DRAIN (jobs/s, median of %d)\tJOBS/S\tV3CTL/RIVER\n", len(d.RiverRounds))
		fmt.Fprintf(w, "River (MaxWorkers %d)\t%.0f\t\n", m.Workers, d.River.PerSecond)
		fmt.Fprintf(w, "v3ctl worker loop (%d slots)\t%.0f\t%s\n", m.Workers, d.V3Worker.PerSecond, ratio(d.V3Worker.PerSecond, d.River.PerSecond))
		fmt.Fprintf(w, "v3ctl claim batch %d + batch complete (%d loops)\t%.0f\t%s\n", d.Batch, m.Workers, d.V3Batch.PerSecond, ratio(d.V3Batch.PerSecond, d.River.PerSecond))
		if ph := r.Physical; ph != nil && ph.PerSecond > 0 {
			fmt.Fprintf(w, "physical limit: single-row UPDATE commits/s (%d conns, synchronous_commit=%s)\t%.0f\t\n", ph.Concurrent, ph.SynchronousCommit, ph.PerSecond)
		}
		fmt.Fprintln(w)
	} else if ph := r.Physical; ph != nil {
		fmt.Fprintf(w, "physical limit: single-row UPDATE commits/s (%d conns, synchronous_commit=%s)\t%.0f\n\n", ph.Concurrent, ph.SynchronousCommit, ph.PerSecond)
	}
	if p := r.Pickup; p != nil {
		fmt.Fprintln(w, "PICKUP (enqueue -> handler start)\tP50 MS\tP95 MS\tP99 MS\tP50 V3CTL/RIVER")
		fmt.Fprintf(w, "River\t%.2f\t%.2f\t%.2f\t\n", p.River.P50, p.River.P95, p.River.P99)
		fmt.Fprintf(w, "v3ctl worker loop\t%.2f\t%.2f\t%.2f\t%s\n", p.V3Worker.P50, p.V3Worker.P95, p.V3Worker.P99, ratio(p.V3Worker.P50, p.River.P50))
		fmt.Fprintf(w, "v3ctl listening claimers\t%.2f\t%.2f\t%.2f\t%s\n", p.V3Batch.P50, p.V3Batch.P95, p.V3Batch.P99, ratio(p.V3Batch.P50, p.River.P50))
		fmt.Fprintln(w)
	}
	if len(r.Claim) > 0 {
		fmt.Fprintln(w, "CLAIM LATENCY (v3ctl, one job)\tP50 MS\tP95 MS\tP99 MS\tFILL S")
		for _, c := range r.Claim {
			fmt.Fprintf(w, "%d pending\t%.2f\t%.2f\t%.2f\t%.1f\n", c.Pending, c.Latency.P50, c.Latency.P95, c.Latency.P99, c.FillSecs)
		}
		fmt.Fprintln(w)
	}
	if len(r.TopSQL) > 0 {
		fmt.Fprintln(w, "TOP STATEMENTS (pg_stat_statements, whole run)\tCALLS\tTOTAL MS\tMEAN MS")
		for _, s := range r.TopSQL {
			fmt.Fprintf(w, "%s\t%d\t%.0f\t%.3f\n", s.Query, s.Calls, s.TotalMS, s.MeanMS)
		}
	}
	_ = w.Flush()
}

func median(rs []bench.Rate) bench.Rate {
	if len(rs) == 0 {
		return bench.Rate{}
	}
	s := append([]bench.Rate(nil), rs...)
	sort.Slice(s, func(i, j int) bool { return s[i].PerSecond < s[j].PerSecond })
	return s[len(s)/2]
}

func round2(f float64) float64 { return float64(int64(f*100+0.5)) / 100 }

func logf(format string, a ...any) {
	fmt.Fprintf(os.Stderr, time.Now().Format("15:04:05 ")+format+"\n", a...)
}
