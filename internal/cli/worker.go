package cli

import (
	"fmt"
	"log/slog"
	"os"
	"sort"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"gopkg.in/yaml.v3"

	"github.com/v3ctl/v3ctl/internal/handlers"
	"github.com/v3ctl/v3ctl/internal/worker"
)

func init() { Register(newWorkerCmd) }

func newWorkerCmd(a *App) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "worker",
		Short: "Run a job worker (claims, heartbeats, drains on SIGTERM) and inspect its handlers",
		Example: `  v3ctl worker run --concurrency 8 --metrics-addr :9090
  v3ctl worker run --types ai_processing --lanes ai_queue_simple,ai_queue_complex
  v3ctl worker handlers`,
	}
	cmd.AddCommand(newWorkerRunCmd(a), newWorkerHandlersCmd(a))
	return cmd
}

// workerFlags maps flags to viper keys (config file worker.*, env
// V3CTL_WORKER_*).
var workerFlags = map[string]string{
	"concurrency":        "worker.concurrency",
	"types":              "worker.types",
	"lanes":              "worker.lanes",
	"worker-id":          "worker.worker_id",
	"poll-interval":      "worker.poll_interval",
	"shutdown-grace":     "worker.shutdown_grace",
	"heartbeat-interval": "worker.heartbeat_interval",
	"reclaim-interval":   "worker.reclaim_interval",
	"metrics-addr":       "worker.metrics_addr",
	"exit-when-idle":     "worker.exit_when_idle",
	"log-format":         "worker.log_format",
	"log-level":          "worker.log_level",
}

func newWorkerRunCmd(a *App) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "run",
		Short: "Claim and run jobs until SIGINT/SIGTERM, then drain",
		Long: `Runs jobs with the handlers configured under worker.handlers in the config
file (kinds: exec, http, openai) plus the built-in system_maintenance and
audit_cleanup jobs.

The worker claims jobs in batches to fill free slots, wakes on NOTIFY v3_jobs
and polls as a fallback, and renews all in-flight leases with one heartbeat
statement per interval (worker.heartbeat_interval_seconds unless
--heartbeat-interval is given). A job whose lease is lost has its handler
cancelled and its result discarded. While system.maintenance_mode is true it
claims nothing. Database restarts are ridden out with backoff.

SIGINT/SIGTERM: stop claiming, let running jobs finish within
--shutdown-grace, then hand the rest back without consuming an attempt. A
second signal exits at once (reclaim recovers those jobs later).

--exit-when-idle D turns the worker into a batch runner: it exits (status 0)
once no job has been running and none could be claimed for D. Retries whose
backoff ends within D are still run; jobs scheduled further ahead stay pending.

Every flag can also be set in the config file (worker.concurrency,
worker.poll_interval, ...) or the environment (V3CTL_WORKER_CONCURRENCY, ...).
Logs (stderr) carry job_id, correlation_id, attempt and duration, never
payloads or results.`,
		Example: `  # config.yaml
  worker:
    concurrency: 8
    handlers:
      shell_file_processing: {kind: exec, command: ["./bin/extract-text"], timeout: 60s, env: {V3_DOCUMENT_ROOT: /srv/documents}}
      ai_processing: {kind: openai, model: gpt-4o-mini, api_key_env: OPENAI_API_KEY, provider: openai, endpoint: gpt-4o-mini}
      notification_delivery: {kind: http, url: "https://example.org/hook", secret_env: WEBHOOK_SECRET}

  v3ctl worker run --metrics-addr :9090 --log-format json
  v3ctl worker run --exit-when-idle 5s   # drain the queue, then exit
  V3CTL_WORKER_CONCURRENCY=16 v3ctl worker run --types ai_processing`,
		Args: cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			cfg, err := workerConfig(a)
			if err != nil {
				return err
			}
			url, err := a.URL(c.Context())
			if err != nil {
				return err
			}
			cfg.DatabaseURL = url
			w, err := worker.New(cfg, nil, nil)
			if err != nil {
				if _, ok := err.(*worker.NoHandlerError); ok {
					return UsageErrorf("%v", err)
				}
				return UsageErrorf("invalid worker configuration: %v", err)
			}
			return w.Run(c.Context())
		},
	}
	f := cmd.Flags()
	f.Int("concurrency", 4, "jobs run at once")
	f.StringSlice("types", nil, "job types to claim (default: every type with a handler)")
	f.StringSlice("lanes", nil, "lanes to claim (default: any)")
	f.String("worker-id", "", "worker id recorded on claimed jobs (default: host-pid)")
	f.Duration("poll-interval", 2*time.Second, "poll for jobs this often when no NOTIFY arrives")
	f.Duration("shutdown-grace", 30*time.Second, "after SIGTERM, how long running jobs may finish before they are handed back")
	f.Duration("heartbeat-interval", 0, "lease renewal interval (default: worker.heartbeat_interval_seconds from the database)")
	f.Duration("reclaim-interval", 30*time.Second, "run reclaim_timed_out_jobs this often (negative: never)")
	f.String("metrics-addr", "", "serve /metrics, /healthz and /readyz on this address, e.g. :9090")
	f.Duration("exit-when-idle", 0, "exit once no job has run or been claimable for this long (0: run until stopped)")
	f.String("log-format", "text", "log format: text or json")
	f.String("log-level", "info", "log level: debug, info, warn or error")
	for flag, key := range workerFlags {
		_ = a.V.BindPFlag(key, f.Lookup(flag))
	}
	_ = cmd.RegisterFlagCompletionFunc("log-format", fixedCompletion([]string{"text", "json"}))
	_ = cmd.RegisterFlagCompletionFunc("log-level", fixedCompletion([]string{"debug", "info", "warn", "error"}))
	return cmd
}

// listValue reads a list from a flag, the config file (YAML list) or the
// environment ("a,b" or "a b").
func listValue(a *App, key string) []string {
	var out []string
	for _, s := range a.V.GetStringSlice(key) {
		for _, p := range strings.FieldsFunc(s, func(r rune) bool { return r == ',' || r == ' ' }) {
			out = append(out, strings.TrimSpace(p))
		}
	}
	return out
}

// workerConfig assembles the worker configuration from flags, env and the
// config file.
func workerConfig(a *App) (worker.Config, error) {
	v := a.V
	var cfg worker.Config
	format := strings.ToLower(v.GetString("worker.log_format"))
	if err := oneOf("log-format", format, []string{"text", "json"}); err != nil {
		return cfg, err
	}
	var level slog.Level
	if err := level.UnmarshalText([]byte(v.GetString("worker.log_level"))); err != nil {
		return cfg, UsageErrorf("invalid --log-level %q: valid values are debug, info, warn, error", v.GetString("worker.log_level"))
	}
	if a.Verbose() >= 2 {
		level = slog.LevelDebug
	}
	opts := &slog.HandlerOptions{Level: level}
	if format == "json" {
		cfg.Logger = slog.New(slog.NewJSONHandler(a.Err, opts))
	} else {
		cfg.Logger = slog.New(slog.NewTextHandler(a.Err, opts))
	}
	cfg.Concurrency = v.GetInt("worker.concurrency")
	if cfg.Concurrency < 1 || cfg.Concurrency > 1000 {
		return cfg, UsageErrorf("invalid --concurrency %d: use 1..1000", cfg.Concurrency)
	}
	cfg.Types = listValue(a, "worker.types")
	cfg.Lanes = listValue(a, "worker.lanes")
	cfg.WorkerID = v.GetString("worker.worker_id")
	durs := []struct {
		flag string
		dst  *time.Duration
		min  time.Duration
	}{
		{"poll-interval", &cfg.PollInterval, 10 * time.Millisecond},
		{"shutdown-grace", &cfg.ShutdownGrace, 0},
		{"heartbeat-interval", &cfg.HeartbeatInterval, 0},
		{"reclaim-interval", &cfg.ReclaimInterval, -1 << 62},
		{"exit-when-idle", &cfg.ExitWhenIdle, 0},
	}
	for _, d := range durs {
		*d.dst = v.GetDuration(workerFlags[d.flag])
		if *d.dst < d.min {
			return cfg, UsageErrorf("invalid --%s %s: must be at least %s", d.flag, *d.dst, d.min)
		}
	}
	if cfg.ShutdownGrace == 0 {
		cfg.ShutdownGrace = time.Millisecond // "0" means hand back at once
	}
	cfg.MetricsAddr = v.GetString("worker.metrics_addr")
	cfg.DisableBuiltins = v.GetBool("worker.disable_builtins")
	specs := map[string]handlers.Spec{}
	if err := v.UnmarshalKey("worker.handlers", &specs); err != nil {
		return cfg, UsageErrorf("invalid worker.handlers in %s: %v", a.ConfigPath, err)
	}
	if err := restoreEnvCase(a.ConfigPath, specs); err != nil {
		return cfg, UsageErrorf("invalid worker.handlers in %s: %v", a.ConfigPath, err)
	}
	cfg.Handlers = specs
	return cfg, nil
}

// restoreEnvCase puts back the case of the handlers' env names: viper
// lower-cases every key it reads, and environment variable names are case
// sensitive (V3_DOCUMENT_ROOT must not reach the handler as
// v3_document_root). The names are read again from the config file.
func restoreEnvCase(path string, specs map[string]handlers.Spec) error {
	hasEnv := false
	for _, s := range specs {
		hasEnv = hasEnv || len(s.Env) > 0
	}
	if !hasEnv || path == "" {
		return nil
	}
	raw, err := os.ReadFile(path)
	if err != nil {
		return nil // nothing read from a file: nothing to restore
	}
	var doc map[string]any
	if err := yaml.Unmarshal(raw, &doc); err != nil {
		return err
	}
	// child finds a key case-insensitively, as viper does.
	child := func(m map[string]any, key string) map[string]any {
		for k, v := range m {
			if strings.EqualFold(k, key) {
				c, _ := v.(map[string]any)
				return c
			}
		}
		return nil
	}
	hs := child(child(doc, "worker"), "handlers")
	for jt, s := range specs {
		env := child(child(hs, jt), "env")
		if len(s.Env) == 0 || env == nil {
			continue
		}
		fixed := make(map[string]string, len(s.Env))
		for k, v := range s.Env {
			fixed[k] = v
		}
		for name := range env {
			lower := strings.ToLower(name)
			if v, ok := s.Env[lower]; ok && name != lower {
				delete(fixed, lower)
				fixed[name] = v
			}
		}
		s.Env = fixed
		specs[jt] = s
	}
	return nil
}

func newWorkerHandlersCmd(a *App) *cobra.Command {
	return &cobra.Command{
		Use:   "handlers",
		Short: "List the job handlers configured under worker.handlers (and the built-in ones)",
		Example: `  v3ctl worker handlers
  v3ctl worker handlers -o json`,
		Args: cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			specs := map[string]handlers.Spec{}
			if err := a.V.UnmarshalKey("worker.handlers", &specs); err != nil {
				return UsageErrorf("invalid worker.handlers in %s: %v", a.ConfigPath, err)
			}
			type row struct {
				JobType string        `json:"job_type" yaml:"job_type"`
				Kind    string        `json:"kind" yaml:"kind"`
				Target  string        `json:"target" yaml:"target"`
				Timeout time.Duration `json:"timeout_ns,omitempty" yaml:"timeout,omitempty"`
			}
			var rows []row
			for jt, s := range specs {
				target := ""
				switch s.Kind {
				case "exec":
					target = strings.Join(s.Command, " ")
				case "http":
					target = redactQuery(s.URL)
				case "openai":
					target = fmt.Sprintf("%s %s (%s/%s)", redactQuery(s.BaseURL), s.Model, s.Provider, s.Endpoint)
				}
				rows = append(rows, row{jt, s.Kind, target, s.Timeout})
			}
			if !a.V.GetBool("worker.disable_builtins") {
				for _, jt := range []string{worker.TypeSystemMaintenance, worker.TypeAuditCleanup} {
					if _, ok := specs[jt]; !ok {
						rows = append(rows, row{JobType: jt, Kind: "builtin", Target: "-"})
					}
				}
			}
			sort.Slice(rows, func(i, j int) bool { return rows[i].JobType < rows[j].JobType })
			table := make([][]string, len(rows))
			for i, r := range rows {
				t := "-"
				if r.Timeout > 0 {
					t = r.Timeout.String()
				}
				table[i] = []string{r.JobType, r.Kind, r.Target, t}
			}
			if rows == nil {
				rows = []row{}
			}
			return a.Printer().Print(rows, []string{"JOB TYPE", "KIND", "TARGET", "TIMEOUT"}, table)
		},
	}
}

func redactQuery(u string) string {
	if i := strings.IndexAny(u, "?#"); i >= 0 {
		return u[:i]
	}
	return u
}
