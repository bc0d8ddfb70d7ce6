package cli

import (
	"fmt"
	"sort"
	"strconv"
	"strings"

	"github.com/spf13/cobra"

	"github.com/v3ctl/v3ctl/internal/output"
	"github.com/v3ctl/v3ctl/internal/ratelimit"
)

func init() { Register(newLimitsCmd) }

func newLimitsCmd(a *App) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "limits",
		Short: "Vendor API capacity: live use, limits per provider/endpoint, status, vendor blocks",
		Long: `Every worker shares each vendor's limits: requests and tokens per sliding
60-second window (an exact sliding log of grants) and concurrent calls. A
vendor 429 blocks the provider/endpoint for every worker until its
retry-after. Changes are validated and audited. See docs/ratelimit.md.`,
		Example: `  v3ctl limits list
  v3ctl limits list openai -o json
  v3ctl limits set openai/gpt-4o-mini --rpm 1000 --tpm 400000 --reason "tier 3"
  v3ctl limits set google/vision-api --status maintenance --dry-run
  v3ctl limits add mistral/large --rpm 300 --tpm 100000 --concurrency 10
  v3ctl limits reset openai --yes          # clear holds, window and blocks
  v3ctl limits remove mistral/large --yes`,
	}
	cmd.AddCommand(newLimitsListCmd(a), newLimitsSetCmd(a), newLimitsAddCmd(a), newLimitsRemoveCmd(a), newLimitsResetCmd(a))
	return cmd
}

// limitTarget parses PROVIDER/ENDPOINT (or PROVIDER alone when allowed).
func limitTarget(arg string, providerOnly bool) (string, string, error) {
	if providerOnly && !strings.Contains(arg, "/") {
		if arg == "" {
			return "", "", UsageErrorf("expected PROVIDER or PROVIDER/ENDPOINT")
		}
		return arg, "", nil
	}
	p, e, err := ratelimit.ParseTarget(arg)
	if err != nil {
		return "", "", UsageErrorf("%v", err)
	}
	return p, e, nil
}

// completeLimits offers the configured provider/endpoint pairs.
func completeLimits(a *App) func(*cobra.Command, []string, string) ([]string, cobra.ShellCompDirective) {
	return func(c *cobra.Command, args []string, _ string) ([]string, cobra.ShellCompDirective) {
		if len(args) > 0 {
			return nil, cobra.ShellCompDirectiveNoFileComp
		}
		pool, err := a.DB(c.Context())
		if err != nil {
			return nil, cobra.ShellCompDirectiveNoFileComp
		}
		st, err := ratelimit.List(c.Context(), pool, "", "")
		if err != nil {
			return nil, cobra.ShellCompDirectiveNoFileComp
		}
		var out []string
		for _, s := range st {
			out = append(out, s.Key()+"\t"+s.Status)
		}
		return out, cobra.ShellCompDirectiveNoFileComp
	}
}

func newLimitsListCmd(a *App) *cobra.Command {
	return &cobra.Command{
		Use:     "list [PROVIDER[/ENDPOINT]]",
		Aliases: []string{"ls"},
		Short:   "Live use against each limit: requests and tokens in the window, calls in flight, blocks, refusals",
		Long: `For each provider/endpoint: requests and tokens granted in the current
sliding window against their limits, calls in flight against the concurrency
limit, the vendor block (after a 429) if any, and refusals and vendor 429s in
the last hour. A limit shown as "-" is not enforced.`,
		Example: `  v3ctl limits list
  v3ctl limits list openai
  v3ctl limits list anthropic/claude-3 -o yaml`,
		Args:              cobra.MaximumNArgs(1),
		ValidArgsFunction: completeLimits(a),
		RunE: func(c *cobra.Command, args []string) error {
			var provider, endpoint string
			if len(args) == 1 {
				var err error
				if provider, endpoint, err = limitTarget(args[0], true); err != nil {
					return err
				}
			}
			pool, err := a.DB(c.Context())
			if err != nil {
				return err
			}
			st, err := ratelimit.List(c.Context(), pool, provider, endpoint)
			if err != nil {
				return sqlErr(err)
			}
			p := a.Printer()
			rows := make([][]string, 0, len(st))
			for _, s := range st {
				status := s.Status
				switch s.Status {
				case "disabled":
					status = p.Paint(stylesErr(), status)
				case "maintenance":
					status = p.Paint(stylesWarn(), status)
				}
				tokLimit := "-"
				var tokPct float64
				if s.TokensPerMinute != nil {
					tokLimit = strconv.Itoa(*s.TokensPerMinute)
					tokPct = pct(float64(s.TokensUsed), float64(*s.TokensPerMinute))
				}
				blocked := "-"
				if s.BlockedUntil != nil {
					blocked = p.Paint(stylesWarn(), fmtTime(s.BlockedUntil)+" ("+fmtAgo(*s.BlockedUntil)+")")
				}
				rows = append(rows, []string{
					s.Key(), status, fmt.Sprintf("%ds", s.WindowSeconds),
					usageCell(p, fmt.Sprintf("%d/%d", s.RequestsUsed, s.RequestsPerMinute), pct(float64(s.RequestsUsed), float64(s.RequestsPerMinute))),
					usageCell(p, fmt.Sprintf("%d/%s", s.TokensUsed, tokLimit), tokPct),
					usageCell(p, fmt.Sprintf("%d/%d", s.InFlight, s.Concurrency), pct(float64(s.InFlight), float64(s.Concurrency))),
					blocked,
					refusalsCell(s),
					strconv.FormatInt(s.Vendor429LastHour, 10),
				})
			}
			return p.Print(st, []string{"PROVIDER/ENDPOINT", "STATUS", "WINDOW", "REQUESTS", "TOKENS", "IN FLIGHT", "BLOCKED UNTIL", "REFUSALS 1H", "429S 1H"}, rows)
		},
	}
}

func pct(used, limit float64) float64 {
	if limit <= 0 {
		return 0
	}
	return used / limit * 100
}

// usageCell warns at 80 % of a limit and flags 100 %.
func usageCell(pr *output.Printer, v string, p float64) string {
	switch {
	case p >= 100:
		return pr.Paint(stylesErr(), v)
	case p >= 80:
		return pr.Paint(stylesWarn(), v)
	}
	return v
}

// refusalsCell: the total and the reasons, busiest first ("12 (tokens 9, concurrency 3)").
func refusalsCell(s ratelimit.Status) string {
	if s.RefusalsLastHour == 0 {
		return "0"
	}
	type rc struct {
		r string
		n int64
	}
	var rs []rc
	for r, n := range s.RefusalsByReason {
		rs = append(rs, rc{r, n})
	}
	sort.Slice(rs, func(i, j int) bool { return rs[i].n > rs[j].n || (rs[i].n == rs[j].n && rs[i].r < rs[j].r) })
	parts := make([]string, len(rs))
	for i, x := range rs {
		parts[i] = fmt.Sprintf("%s %d", x.r, x.n)
	}
	return fmt.Sprintf("%d (%s)", s.RefusalsLastHour, strings.Join(parts, ", "))
}

// limitFlags are the flags shared by set and add.
type limitFlags struct {
	rpm, conc, window int
	tpm, status       string
	reason            string
	dry               bool
}

func (f *limitFlags) register(cmd *cobra.Command, add bool) {
	fl := cmd.Flags()
	fl.IntVar(&f.rpm, "rpm", 0, "requests per window (per minute unless --window-seconds)")
	fl.StringVar(&f.tpm, "tpm", "", `tokens per window, or "none" for no token limit`)
	fl.IntVar(&f.conc, "concurrency", 0, "calls in flight at once")
	statusHelp := "status: " + strings.Join(ratelimit.Statuses, ", ")
	if add {
		statusHelp += " (default active)"
	}
	fl.StringVar(&f.status, "status", "", statusHelp)
	fl.IntVar(&f.window, "window-seconds", 0, "length of the sliding window, 1-3600 (vendors count per 60 s; shorter is for tests)")
	fl.StringVar(&f.reason, "reason", "", "why, recorded in the audit log")
	addDryRun(cmd, &f.dry)
	_ = cmd.RegisterFlagCompletionFunc("status", func(*cobra.Command, []string, string) ([]string, cobra.ShellCompDirective) {
		return ratelimit.Statuses, cobra.ShellCompDirectiveNoFileComp
	})
	_ = cmd.RegisterFlagCompletionFunc("tpm", func(*cobra.Command, []string, string) ([]string, cobra.ShellCompDirective) {
		return []string{"none"}, cobra.ShellCompDirectiveNoFileComp
	})
}

func positiveFlag(c *cobra.Command, name string, v int) error {
	if c.Flags().Changed(name) && v < 1 {
		return UsageErrorf("invalid --%s %d: must be a positive integer", name, v)
	}
	return nil
}

// changes validates the flags and returns what was given.
func (f *limitFlags) changes(c *cobra.Command) (ratelimit.Changes, error) {
	var ch ratelimit.Changes
	for name, v := range map[string]int{"rpm": f.rpm, "concurrency": f.conc} {
		if err := positiveFlag(c, name, v); err != nil {
			return ch, err
		}
	}
	if c.Flags().Changed("window-seconds") && (f.window < 1 || f.window > 3600) {
		return ch, UsageErrorf("invalid --window-seconds %d: must be between 1 and 3600", f.window)
	}
	if c.Flags().Changed("rpm") {
		ch.RequestsPerMinute = ptrTo(f.rpm)
	}
	if c.Flags().Changed("concurrency") {
		ch.Concurrency = ptrTo(f.conc)
	}
	if c.Flags().Changed("window-seconds") {
		ch.WindowSeconds = ptrTo(f.window)
	}
	if c.Flags().Changed("tpm") {
		switch v := strings.ToLower(strings.TrimSpace(f.tpm)); v {
		case "none", "unlimited", "-":
			ch.TokensUnlimited = true
		default:
			n, err := strconv.Atoi(v)
			if err != nil || n < 1 {
				return ch, UsageErrorf(`invalid --tpm %q: use a positive integer, or "none" for no token limit`, f.tpm)
			}
			ch.TokensPerMinute = ptrTo(n)
		}
	}
	if c.Flags().Changed("status") {
		if err := oneOf("status", f.status, ratelimit.Statuses); err != nil {
			return ch, err
		}
		ch.Status = ptrTo(f.status)
	}
	return ch, nil
}

func ptrTo[T any](v T) *T { return &v }

func fmtTPM(v *int) string {
	if v == nil {
		return "none"
	}
	return strconv.Itoa(*v)
}

// describeChange lists "field old -> new" for what differs.
func describeChange(o, n ratelimit.Config) string {
	var parts []string
	add := func(name, a, b string) {
		if a != b {
			parts = append(parts, fmt.Sprintf("%s %s -> %s", name, a, b))
		}
	}
	add("rpm", strconv.Itoa(o.RequestsPerMinute), strconv.Itoa(n.RequestsPerMinute))
	add("tpm", fmtTPM(o.TokensPerMinute), fmtTPM(n.TokensPerMinute))
	add("concurrency", strconv.Itoa(o.Concurrency), strconv.Itoa(n.Concurrency))
	add("status", o.Status, n.Status)
	add("window", strconv.Itoa(o.WindowSeconds)+"s", strconv.Itoa(n.WindowSeconds)+"s")
	return strings.Join(parts, ", ")
}

func describeConfig(c ratelimit.Config) string {
	return fmt.Sprintf("rpm %d, tpm %s, concurrency %d, status %s, window %ds",
		c.RequestsPerMinute, fmtTPM(c.TokensPerMinute), c.Concurrency, c.Status, c.WindowSeconds)
}

func newLimitsSetCmd(a *App) *cobra.Command {
	var f limitFlags
	cmd := &cobra.Command{
		Use:   "set PROVIDER/ENDPOINT",
		Short: "Change a provider/endpoint's limits or status (validated, audited)",
		Long: `Change requests, tokens or concurrent calls allowed, or the status:
active; disabled (every acquire refused, reason "disabled"); maintenance
(refused, reason "maintenance"). Only the flags given change.`,
		Example: `  v3ctl limits set openai/gpt-4o-mini --rpm 1000 --tpm 400000 --reason "tier 3"
  v3ctl limits set google/vision-api --tpm none
  v3ctl limits set anthropic/claude-3 --status disabled --dry-run`,
		Args:              cobra.ExactArgs(1),
		ValidArgsFunction: completeLimits(a),
		RunE: func(c *cobra.Command, args []string) error {
			provider, endpoint, err := limitTarget(args[0], false)
			if err != nil {
				return err
			}
			ch, err := f.changes(c)
			if err != nil {
				return err
			}
			if ch.Empty() {
				return UsageErrorf("nothing to change: pass at least one of --rpm, --tpm, --concurrency, --status, --window-seconds")
			}
			pool, err := a.DB(c.Context())
			if err != nil {
				return err
			}
			res, err := ratelimit.Set(c.Context(), pool, provider, endpoint, ch, a.Actor(), f.reason, f.dry)
			if err != nil {
				return sqlErr(err)
			}
			if p := a.Printer(); p.Structured() {
				return p.Print(res, nil, nil)
			}
			switch {
			case !res.Changed:
				a.Infof("%s already has these values; nothing changed", res.Key)
			case f.dry:
				a.Infof("dry run: %s would change: %s; nothing was changed", res.Key, describeChange(res.Old, res.New))
			default:
				a.Infof("%s: %s (audited as %s)", res.Key, describeChange(res.Old, res.New), a.Actor())
			}
			return nil
		},
	}
	f.register(cmd, false)
	return cmd
}

func newLimitsAddCmd(a *App) *cobra.Command {
	var f limitFlags
	cmd := &cobra.Command{
		Use:   "add PROVIDER/ENDPOINT --rpm N --concurrency N [--tpm N|none]",
		Short: "Add a provider/endpoint with its limits (audited)",
		Example: `  v3ctl limits add mistral/large --rpm 300 --tpm 100000 --concurrency 10
  v3ctl limits add aws/textract --rpm 600 --concurrency 20 --status disabled --dry-run`,
		Args: cobra.ExactArgs(1),
		RunE: func(c *cobra.Command, args []string) error {
			provider, endpoint, err := limitTarget(args[0], false)
			if err != nil {
				return err
			}
			for _, name := range []string{"rpm", "concurrency"} {
				if !c.Flags().Changed(name) {
					return UsageErrorf("--%s is required", name)
				}
			}
			ch, err := f.changes(c)
			if err != nil {
				return err
			}
			cfg := ratelimit.Config{Provider: provider, Endpoint: endpoint, RequestsPerMinute: *ch.RequestsPerMinute,
				TokensPerMinute: ch.TokensPerMinute, Concurrency: *ch.Concurrency}
			if ch.Status != nil {
				cfg.Status = *ch.Status
			}
			if ch.WindowSeconds != nil {
				cfg.WindowSeconds = *ch.WindowSeconds
			}
			pool, err := a.DB(c.Context())
			if err != nil {
				return err
			}
			res, err := ratelimit.Add(c.Context(), pool, cfg, a.Actor(), f.reason, f.dry)
			if err != nil {
				return sqlErr(err)
			}
			if p := a.Printer(); p.Structured() {
				return p.Print(res, nil, nil)
			}
			if f.dry {
				a.Infof("dry run: would add %s: %s; nothing was changed", res.Key(), describeConfig(res))
			} else {
				a.Infof("added %s: %s (audited as %s)", res.Key(), describeConfig(res), a.Actor())
			}
			return nil
		},
	}
	f.register(cmd, true)
	return cmd
}

func newLimitsRemoveCmd(a *App) *cobra.Command {
	var reason string
	var dry bool
	cmd := &cobra.Command{
		Use:     "remove PROVIDER/ENDPOINT",
		Aliases: []string{"rm"},
		Short:   "Remove a provider/endpoint with its holds, window and statistics (audited)",
		Long: `Remove a provider/endpoint. Calls in flight lose their holds, and workers
asking for it afterwards get an "unknown provider/endpoint" error: disable it
(limits set --status disabled) to refuse calls cleanly instead.`,
		Example: `  v3ctl limits remove mistral/large --reason "contract ended" --yes
  v3ctl limits remove mistral/large --dry-run`,
		Args:              cobra.ExactArgs(1),
		ValidArgsFunction: completeLimits(a),
		RunE: func(c *cobra.Command, args []string) error {
			provider, endpoint, err := limitTarget(args[0], false)
			if err != nil {
				return err
			}
			pool, err := a.DB(c.Context())
			if err != nil {
				return err
			}
			if !dry {
				if err := a.Confirm("remove " + provider + "/" + endpoint); err != nil {
					return err
				}
			}
			res, err := ratelimit.Remove(c.Context(), pool, provider, endpoint, a.Actor(), reason, dry)
			if err != nil {
				return sqlErr(err)
			}
			if p := a.Printer(); p.Structured() {
				return p.Print(res, nil, nil)
			}
			if dry {
				a.Infof("dry run: would remove %s (%d call(s) in flight); nothing was changed", res.Removed.Key(), res.InFlight)
			} else {
				a.Infof("removed %s (%d call(s) in flight) (audited as %s)", res.Removed.Key(), res.InFlight, a.Actor())
			}
			return nil
		},
	}
	cmd.Flags().StringVar(&reason, "reason", "", "why, recorded in the audit log")
	addDryRun(cmd, &dry)
	return cmd
}

func newLimitsResetCmd(a *App) *cobra.Command {
	var reason string
	var dry bool
	cmd := &cobra.Command{
		Use:   "reset PROVIDER[/ENDPOINT]",
		Short: "Clear holds, the window ledger and vendor blocks of a provider or one endpoint (audited)",
		Long: `Forget every hold (calls in flight), every grant in the sliding window and
any vendor block, for one provider/endpoint or all endpoints of a provider.
Limits and refusal statistics are kept. Use it after an incident, e.g. when a
crash left holds you know are dead and you cannot wait for their lease.

Forgetting the window lets workers spend a full window's requests and tokens
again at once: right after busy traffic that can exceed the vendor's own
per-minute limit for up to one window and draw 429s. Dead holds alone also
return by themselves within ratelimit.hold_seconds.`,
		Example: `  v3ctl limits reset openai --yes
  v3ctl limits reset anthropic/claude-3 --reason "stuck after outage" --yes
  v3ctl limits reset google --dry-run -o json`,
		Args:              cobra.ExactArgs(1),
		ValidArgsFunction: completeLimits(a),
		RunE: func(c *cobra.Command, args []string) error {
			provider, endpoint, err := limitTarget(args[0], true)
			if err != nil {
				return err
			}
			pool, err := a.DB(c.Context())
			if err != nil {
				return err
			}
			if !dry {
				if err := a.Confirm("reset vendor capacity of " + args[0]); err != nil {
					return err
				}
			}
			res, err := ratelimit.Reset(c.Context(), pool, provider, endpoint, a.Actor(), reason, dry)
			if err != nil {
				return sqlErr(err)
			}
			if p := a.Printer(); p.Structured() {
				return p.Print(res, nil, nil)
			}
			msg := fmt.Sprintf("%s: %d hold(s), %d grant(s) cleared, %d block(s) lifted",
				strings.Join(res.Reset, ", "), res.HoldsCleared, res.GrantsClear, res.Unblocked)
			if dry {
				a.Infof("dry run: would reset %s; nothing was changed", msg)
			} else {
				a.Infof("reset %s (audited as %s)", msg, a.Actor())
			}
			return nil
		},
	}
	cmd.Flags().StringVar(&reason, "reason", "", "why, recorded in the audit log")
	addDryRun(cmd, &dry)
	return cmd
}
