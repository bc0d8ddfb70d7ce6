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
	stats                          bool
	cpuprofile                     string
	riverCooldown, riverPoll       time.Duration
	only                           string
	batch                          int
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
	flag.StringVar(&o.cpuprofile, "cpuprofile", "", "write a CPU profile of this process (both systems' client side)")
	flag.DurationVar(&o.riverCooldown, "river-fetch-cooldown", time.Millisecond, "River FetchCooldown (default 100ms in River)")
	flag.DurationVar(&o.riverPoll, "river-fetch-poll", 50*time.Millisecond, "River FetchPollInterval (default 1s in River)")
	flag.IntVar(&o.batch, "batch", 8, "v3ctl claim batch size (jobs per claim)")
	flag.StringVar(&o.only, "only", "", "comma-separated subset: physical,drain,pickup,claim")
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

func (o options) want(part string) bool {
	if o.only == "" {
		return true
	}
	for _, p := range strings.Split(o.only, ",") {
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
}

type Compare struct {
	V3ctl      bench.Rate   `json:"v3ctl"`
	River      bench.Rate   `json:"river"`
	Ratio      float64      `json:"ratio_v3ctl_over_river"`
	V3Rounds   []bench.Rate `json:"v3ctl_rounds"`
	RiverRound []bench.Rate `json:"river_rounds"`
}

type ComparePickup struct {
	V3ctl bench.Latency `json:"v3ctl"`
	River bench.Latency `json:"river"`
	// Ratio is River p50 / v3ctl p50: above 1 means v3ctl picks up faster.
	Ratio float64 `json:"ratio_river_p50_over_v3ctl_p50"`
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
		st, stopServer, err := bench.StartServer(ctx, bench.ServerOptions{Name: "bench", Fast: o.fast, StatStatements: o.stats})
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
	rep := Report{Machine: Machine{CPUs: runtime.NumCPU(), GoVer: runtime.Version(), Workers: o.workers, Jobs: o.jobs}}
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
		c := &Compare{}
		for i := 0; i < o.rounds; i++ {
			logf("drain round %d/%d: River, %d jobs, %d workers", i+1, o.rounds, o.jobs, o.workers)
			rr, err := riverDrain(ctx, pool, o.jobs, tune)
			if err != nil {
				return err
			}
			c.RiverRound = append(c.RiverRound, rr)
			logf("  River  %s", rr)
			logf("drain round %d/%d: v3ctl, %d jobs, %d workers", i+1, o.rounds, o.jobs, o.workers)
			vr, err := bench.Drain(ctx, pool, bench.DrainOptions{Jobs: o.jobs, Workers: o.workers, Batch: o.batch})
			if err != nil {
				return fmt.Errorf("v3ctl drain: %w", err)
			}
			c.V3Rounds = append(c.V3Rounds, vr.Rate)
			logf("  v3ctl  %s", vr.Rate)
		}
		c.V3ctl, c.River = median(c.V3Rounds), median(c.RiverRound)
		if c.River.PerSecond > 0 {
			c.Ratio = round2(c.V3ctl.PerSecond / c.River.PerSecond)
		}
		rep.Drain = c
	}
	if o.want("pickup") {
		p := &ComparePickup{}
		logf("pickup: River, %d samples", o.samples)
		if p.River, err = riverPickup(ctx, pool, o.samples, tune); err != nil {
			return err
		}
		logf("  River  p50 %.2f ms, p95 %.2f ms, p99 %.2f ms", p.River.P50, p.River.P95, p.River.P99)
		logf("pickup: v3ctl, %d samples", o.samples)
		vr, err := bench.Pickup(ctx, pool, bench.PickupOptions{Samples: o.samples, Workers: o.workers})
		if err != nil {
			return fmt.Errorf("v3ctl pickup: %w", err)
		}
		p.V3ctl = vr
		logf("  v3ctl  p50 %.2f ms, p95 %.2f ms, p99 %.2f ms", vr.P50, vr.P95, vr.P99)
		if p.V3ctl.P50 > 0 {
			p.Ratio = round2(p.River.P50 / p.V3ctl.P50)
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
	fmt.Fprintf(w, "machine: %d CPUs, PostgreSQL %s, durable=%v, %s; %d workers, %d jobs per drain\n\n", m.CPUs, m.Postgres, m.Durable, m.GoVer, m.Workers, m.Jobs)
	fmt.Fprintln(w, "WORKLOAD\tV3CTL\tRIVER\tV3CTL/RIVER")
	if d := r.Drain; d != nil {
		fmt.Fprintf(w, "drain (jobs/s, median of %d)\t%.0f\t%.0f\t%.2fx\n", len(d.V3Rounds), d.V3ctl.PerSecond, d.River.PerSecond, d.Ratio)
	}
	if p := r.Pickup; p != nil {
		row := func(name string, v, rv float64) {
			ratio := "-"
			if rv > 0 {
				ratio = fmt.Sprintf("%.2fx", v/rv)
			}
			fmt.Fprintf(w, "pickup %s (ms)\t%.2f\t%.2f\t%s\n", name, v, rv, ratio)
		}
		row("p50", p.V3ctl.P50, p.River.P50)
		row("p95", p.V3ctl.P95, p.River.P95)
		row("p99", p.V3ctl.P99, p.River.P99)
	}
	if ph := r.Physical; ph != nil {
		fmt.Fprintf(w, "\nphysical limit: single-row UPDATE commits/s\t%.0f\t(%d conns, synchronous_commit=%s)\t\n", ph.PerSecond, ph.Concurrent, ph.SynchronousCommit)
		if d := r.Drain; d != nil && ph.PerSecond > 0 {
			fmt.Fprintf(w, "drain as share of the physical limit\t%.0f%%\t%.0f%%\t\n", 100*d.V3ctl.PerSecond/ph.PerSecond, 100*d.River.PerSecond/ph.PerSecond)
		}
	}
	if len(r.Claim) > 0 {
		fmt.Fprintln(w, "\nCLAIM LATENCY (v3ctl)\tP50 MS\tP95 MS\tP99 MS")
		for _, c := range r.Claim {
			fmt.Fprintf(w, "%d pending\t%.2f\t%.2f\t%.2f\n", c.Pending, c.Latency.P50, c.Latency.P95, c.Latency.P99)
		}
	}
	if len(r.TopSQL) > 0 {
		fmt.Fprintln(w, "\nTOP STATEMENTS (pg_stat_statements)\tCALLS\tTOTAL MS\tMEAN MS")
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
