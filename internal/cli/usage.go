package cli

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/v3ctl/v3ctl/internal/db"
	"github.com/v3ctl/v3ctl/internal/output"
	"github.com/v3ctl/v3ctl/internal/usage"
)

func init() { Register(newUsageCmd) }

// usageErr maps domain errors to exit codes: unknown account/profile/plan
// -> ExitNotFound, input refused by the SQL functions -> ExitUsage.
func usageErr(err error) error {
	if err == nil {
		return nil
	}
	var nf *usage.NotFoundError
	if errors.As(err, &nf) {
		return WithCode(ExitNotFound, err)
	}
	if db.IsInvalidInput(err) {
		return WithCode(ExitUsage, err)
	}
	return err
}

// monthFlag parses --month (YYYY-MM); empty means the current month (zero).
func monthFlag(s string) (time.Time, error) {
	if s == "" {
		return time.Time{}, nil
	}
	m, err := usage.ParseMonth(s)
	if err != nil {
		return m, UsageErrorf("--month: %v", err)
	}
	return m, nil
}

func pctText(p *float64) string {
	if p == nil {
		return "-"
	}
	return strconv.FormatFloat(*p, 'f', 1, 64) + "%"
}

func limitText(l *int64) string {
	if l == nil {
		return "unlimited"
	}
	return usage.FormatCount(*l)
}

func storageLimitText(l *int64) string {
	if l == nil {
		return "unlimited"
	}
	return usage.FormatBytesMB(*l)
}

func optInt(p *int64) string {
	if p == nil {
		return ""
	}
	return strconv.FormatInt(*p, 10)
}

func optFloat(p *float64) string {
	if p == nil {
		return ""
	}
	return strconv.FormatFloat(*p, 'f', 1, 64)
}

// bar paints a usage bar: green below 80 %, yellow from 80 %, red from 100 %.
func bar(p *output.Printer, pct *float64) string {
	if pct == nil {
		return p.Paint(stylesOK(), "unlimited")
	}
	b := output.Bar(*pct, 20)
	switch {
	case *pct >= 100:
		return p.Paint(stylesErr(), b)
	case *pct >= 80:
		return p.Paint(stylesWarn(), b)
	}
	return p.Paint(stylesOK(), b)
}

func newUsageCmd(a *App) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "usage",
		Short: "Usage metering: per-account status, reports, the event ledger, plan assignment, rebuild and verify",
		Long: `Usage is metered per account (a family's dependents share the account holder's
plan) for the calendar month in UTC: shell files, pages and AI tokens are monthly
flows; storage is a level that carries across months and falls when a file is
archived or deleted. Exact bytes are stored; 1 MB = 1,048,576 bytes is only a
display unit. A NULL (unlimited) limit is never over the limit.

With features.billing_enabled an upload or AI job that would exceed a limit is
refused (SQLSTATE V3L01); otherwise usage is recorded and flagged over the limit.`,
		Example: `  v3ctl usage show parent@example.com
  v3ctl usage show 6f1c...-profile-id -o json      # the get_user_usage_status document
  v3ctl usage report --over-limit --month 2026-11 -o csv
  v3ctl usage set-plan parent@example.com premium --reason "support ticket 4411"
  v3ctl usage verify || v3ctl usage rebuild`,
	}
	cmd.AddCommand(newUsageShowCmd(a), newUsageReportCmd(a), newUsageEventsCmd(a), newUsageSetPlanCmd(a),
		newUsagePlanHistoryCmd(a), newUsageRebuildCmd(a), newUsageVerifyCmd(a))
	return cmd
}

func newUsageShowCmd(a *App) *cobra.Command {
	var month string
	c := &cobra.Command{
		Use:   "show PROFILE-ID|ACCOUNT-EMAIL|ACCOUNT-ID",
		Short: "Show an account's usage for a period: each metric used / limit / % with a bar, plan, status and per-profile breakdown",
		Long: `Show the usage of the account a profile belongs to (or the account named by its
email or id) for the current month, or --month. Totals are per account; the
breakdown lists each profile. -o json prints exactly the get_user_usage_status
document the app receives.`,
		Example: `  v3ctl usage show parent@example.com
  v3ctl usage show 0b6d2c1e-4f7a-4c55-9a43-0c1f3f0c2b9e --month 2026-11
  v3ctl usage show parent@example.com -o json`,
		Args: cobra.ExactArgs(1),
		RunE: func(c *cobra.Command, args []string) error {
			ctx := c.Context()
			m, err := monthFlag(month)
			if err != nil {
				return err
			}
			pool, err := a.DB(ctx)
			if err != nil {
				return err
			}
			acct, err := usage.ResolveAccount(ctx, pool, args[0])
			if err != nil {
				return usageErr(err)
			}
			var at *time.Time
			if !m.IsZero() {
				at = &m
			}
			st, err := usage.AccountStatus(ctx, pool, acct.ID, at)
			if err != nil {
				return usageErr(err)
			}
			p := a.Printer()
			if p.Format == "json" || p.Format == "yaml" {
				return p.Print(st, nil, nil)
			}
			u := st.Usage
			s := u.Storage
			headers := []string{"METRIC", "USED", "LIMIT", "PERCENT", "BAR"}
			rows := [][]string{
				{"shell files", usage.FormatCount(u.ShellFiles.Used), limitText(u.ShellFiles.Limit), pctText(u.ShellFiles.Percentage), bar(p, u.ShellFiles.Percentage)},
				{"pages", usage.FormatCount(u.Pages.Used), limitText(u.Pages.Limit), pctText(u.Pages.Percentage), bar(p, u.Pages.Percentage)},
				{"AI tokens", usage.FormatCount(u.AITokens.Used), limitText(u.AITokens.Limit), pctText(u.AITokens.Percentage), bar(p, u.AITokens.Percentage)},
				{"storage", fmt.Sprintf("%.2f MB", s.UsedMB), mbText(s.LimitMB), pctText(s.Percentage), bar(p, s.Percentage)},
			}
			if p.Format == "csv" {
				return p.Print(st, []string{"metric", "used", "limit", "percentage"}, [][]string{
					{"shell_files", strconv.FormatInt(u.ShellFiles.Used, 10), optInt(u.ShellFiles.Limit), optFloat(u.ShellFiles.Percentage)},
					{"pages", strconv.FormatInt(u.Pages.Used, 10), optInt(u.Pages.Limit), optFloat(u.Pages.Percentage)},
					{"ai_tokens", strconv.FormatInt(u.AITokens.Used, 10), optInt(u.AITokens.Limit), optFloat(u.AITokens.Percentage)},
					{"storage_mb", strconv.FormatFloat(s.UsedMB, 'f', 2, 64), mbRaw(s.LimitMB), optFloat(s.Percentage)},
				})
			}
			status := p.Paint(stylesOK(), "within limits")
			switch {
			case st.Status.OverLimit:
				status = p.Paint(stylesErr(), "OVER LIMIT (upgrade required)")
			case st.Status.UpgradeRequired:
				status = p.Paint(stylesWarn(), "at limit (upgrade required to use more)")
			}
			email := "-"
			if acct.Email != nil {
				email = *acct.Email
			}
			p.KV([][2]string{
				{"Account", email + " (" + acct.ID + ")"},
				{"Plan", st.Status.PlanType},
				{"Period", st.CurrentPeriod.Start[:10] + " to " + st.CurrentPeriod.End[:10] + " (UTC, end exclusive)"},
				{"Status", status},
			})
			fmt.Fprintln(a.Out)
			if err := p.Table(headers, rows); err != nil {
				return err
			}
			bd, err := usage.Breakdown(ctx, pool, acct.ID, periodOf(st))
			if err != nil {
				return err
			}
			fmt.Fprintln(a.Out)
			prow := make([][]string, 0, len(bd))
			for _, x := range bd {
				mark := ""
				if x.ProfileID == acct.ProfileID {
					mark = " *"
				}
				prow = append(prow, []string{x.ProfileID + mark, x.ProfileType, usage.FormatCount(x.ShellFiles), usage.FormatCount(x.Pages),
					usage.FormatCount(x.AITokens), usage.FormatCount(x.AIJobs), usage.FormatBytesMB(x.StorageBytes)})
			}
			return p.Table([]string{"PROFILE", "TYPE", "FILES", "PAGES", "AI TOKENS", "AI JOBS", "STORAGE"}, prow)
		},
	}
	c.Flags().StringVar(&month, "month", "", "period as YYYY-MM (default: the current month, UTC)")
	return c
}

func periodOf(st usage.Status) time.Time {
	t, err := time.Parse(time.RFC3339, st.CurrentPeriod.Start)
	if err != nil {
		return time.Now().UTC()
	}
	return t
}

func mbText(p *float64) string {
	if p == nil {
		return "unlimited"
	}
	return strconv.FormatFloat(*p, 'f', -1, 64) + " MB"
}

func mbRaw(p *float64) string {
	if p == nil {
		return ""
	}
	return strconv.FormatFloat(*p, 'f', -1, 64)
}

func newUsageReportCmd(a *App) *cobra.Command {
	var month, plan string
	var over, byProfile bool
	var limit int
	c := &cobra.Command{
		Use:   "report",
		Short: "Every account's usage for a period: plan, each metric and % of its limit, over-limit accounts first",
		Long: `Report every account for a period (default: the current month, UTC): plan,
profiles, shell files, pages, AI tokens and storage with their limits and
percentages. Over-limit accounts come first, then the highest percentage.
Storage is the current level for the current month and the level at the end
of the month for past months. --by-profile lists each profile instead.`,
		Example: `  v3ctl usage report
  v3ctl usage report --over-limit
  v3ctl usage report --plan free --month 2026-11 -o csv > november-free.csv
  v3ctl usage report --by-profile -o json`,
		Args: cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			ctx := c.Context()
			m, err := monthFlag(month)
			if err != nil {
				return err
			}
			if limit < 0 {
				return UsageErrorf("--limit must be >= 0, got %d", limit)
			}
			pool, err := a.DB(ctx)
			if err != nil {
				return err
			}
			if plan != "" {
				if _, err := usage.GetPlan(ctx, pool, plan); err != nil {
					var nf *usage.NotFoundError
					if errors.As(err, &nf) {
						return UsageErrorf("--plan: %v", err)
					}
					return err
				}
			}
			p := a.Printer()
			if byProfile {
				if m.IsZero() {
					m = time.Now().UTC()
				}
				bd, err := usage.Breakdown(ctx, pool, "", m)
				if err != nil {
					return err
				}
				rows := make([][]string, 0, len(bd))
				for _, x := range bd {
					rows = append(rows, []string{x.AccountID, x.ProfileID, x.ProfileType, strconv.FormatInt(x.ShellFiles, 10),
						strconv.FormatInt(x.Pages, 10), strconv.FormatInt(x.BytesUploaded, 10), strconv.FormatInt(x.AITokens, 10),
						strconv.FormatInt(x.AIJobs, 10), strconv.FormatInt(x.AISeconds, 10), strconv.FormatInt(x.StorageBytes, 10)})
				}
				return p.Print(bd, []string{"account_id", "profile_id", "profile_type", "shell_files", "pages", "bytes_uploaded",
					"ai_tokens", "ai_jobs", "ai_seconds", "storage_bytes"}, rows)
			}
			rs, err := usage.Report(ctx, pool, usage.ReportParams{Month: m, Plan: plan, OverLimitOnly: over, Limit: limit})
			if err != nil {
				return usageErr(err)
			}
			if p.Format == "csv" {
				rows := make([][]string, 0, len(rs))
				for _, r := range rs {
					email := ""
					if r.Email != nil {
						email = *r.Email
					}
					rows = append(rows, []string{r.AccountID, email, r.PlanType, strconv.FormatInt(r.Profiles, 10),
						strconv.FormatInt(r.ShellFiles, 10), optInt(r.ShellFilesLimit), optFloat(r.ShellFilesPct),
						strconv.FormatInt(r.Pages, 10), optInt(r.PagesLimit), optFloat(r.PagesPct),
						strconv.FormatInt(r.AITokens, 10), optInt(r.AITokensLimit), optFloat(r.AITokensPct),
						strconv.FormatInt(r.StorageBytes, 10), optInt(r.StorageLimitBytes), optFloat(r.StoragePct),
						strconv.FormatInt(r.BytesUploaded, 10), strconv.FormatInt(r.AIJobs, 10), strconv.FormatInt(r.AISeconds, 10),
						strconv.FormatBool(r.OverLimit)})
				}
				return p.Print(rs, []string{"account_id", "email", "plan_type", "profiles", "shell_files", "shell_files_limit",
					"shell_files_pct", "pages", "pages_limit", "pages_pct", "ai_tokens", "ai_tokens_limit", "ai_tokens_pct",
					"storage_bytes", "storage_limit_bytes", "storage_pct", "bytes_uploaded", "ai_jobs", "ai_seconds", "over_limit"}, rows)
			}
			rows := make([][]string, 0, len(rs))
			for _, r := range rs {
				label := r.AccountID
				if r.Email != nil && *r.Email != "" {
					label = *r.Email
				}
				overTxt := ""
				if r.OverLimit {
					overTxt = p.Paint(stylesErr(), "OVER")
				}
				rows = append(rows, []string{label, r.PlanType, strconv.FormatInt(r.Profiles, 10),
					usage.FormatCount(r.ShellFiles) + "/" + limitText(r.ShellFilesLimit), pctText(r.ShellFilesPct),
					usage.FormatCount(r.Pages) + "/" + limitText(r.PagesLimit), pctText(r.PagesPct),
					usage.FormatCount(r.AITokens) + "/" + limitText(r.AITokensLimit), pctText(r.AITokensPct),
					usage.FormatBytesMB(r.StorageBytes) + "/" + storageLimitText(r.StorageLimitBytes), pctText(r.StoragePct),
					overTxt})
			}
			if len(rs) == 0 && !p.Structured() {
				a.Infof("no accounts match")
				return nil
			}
			return p.Print(rs, []string{"ACCOUNT", "PLAN", "PROFILES", "FILES", "%", "PAGES", "%", "AI TOKENS", "%", "STORAGE", "%", "OVER"}, rows)
		},
	}
	f := c.Flags()
	f.StringVar(&month, "month", "", "period as YYYY-MM (default: the current month, UTC)")
	f.StringVar(&plan, "plan", "", "only accounts on this plan")
	f.BoolVar(&over, "over-limit", false, "only accounts over a limit")
	f.BoolVar(&byProfile, "by-profile", false, "one row per profile (account_id, profile_id, metrics) instead of per account")
	f.IntVar(&limit, "limit", 0, "at most this many accounts (0: all)")
	_ = c.RegisterFlagCompletionFunc("plan", planCompletion(a))
	return c
}

func planCompletion(a *App) func(*cobra.Command, []string, string) ([]string, cobra.ShellCompDirective) {
	return func(c *cobra.Command, _ []string, _ string) ([]string, cobra.ShellCompDirective) {
		pool, err := a.DB(c.Context())
		if err != nil {
			return nil, cobra.ShellCompDirectiveNoFileComp
		}
		ps, err := usage.ListPlans(c.Context(), pool, false)
		if err != nil {
			return nil, cobra.ShellCompDirectiveNoFileComp
		}
		out := make([]string, 0, len(ps))
		for _, p := range ps {
			out = append(out, p.Key+"\t"+p.DisplayName)
		}
		return out, cobra.ShellCompDirectiveNoFileComp
	}
}

func newUsageEventsCmd(a *App) *cobra.Command {
	var month, typ string
	var limit int
	c := &cobra.Command{
		Use:   "events PROFILE-ID|ACCOUNT-EMAIL|ACCOUNT-ID",
		Short: "List a profile's (or a whole account's) usage events, newest first",
		Long: `List rows of the append-only usage ledger, newest first. A profile id lists that
profile's events; an email or account id lists the whole account's, including
account-level events (plan changes, limit hits).`,
		Example: `  v3ctl usage events parent@example.com
  v3ctl usage events 0b6d2c1e-4f7a-4c55-9a43-0c1f3f0c2b9e --type ai_processing_completed --month 2026-11
  v3ctl usage events parent@example.com --type limit_hit -o json`,
		Args: cobra.ExactArgs(1),
		RunE: func(c *cobra.Command, args []string) error {
			ctx := c.Context()
			m, err := monthFlag(month)
			if err != nil {
				return err
			}
			if typ != "" {
				if err := oneOf("type", typ, usage.EventTypes); err != nil {
					return err
				}
			}
			if limit <= 0 {
				return UsageErrorf("--limit must be > 0, got %d", limit)
			}
			pool, err := a.DB(ctx)
			if err != nil {
				return err
			}
			acct, err := usage.ResolveAccount(ctx, pool, args[0])
			if err != nil {
				return usageErr(err)
			}
			ep := usage.EventsParams{AccountID: acct.ID, Month: m, Type: typ, Limit: limit}
			if acct.ProfileID != "" {
				ep = usage.EventsParams{ProfileID: acct.ProfileID, Month: m, Type: typ, Limit: limit}
			}
			evs, err := usage.Events(ctx, pool, ep)
			if err != nil {
				return err
			}
			rows := make([][]string, 0, len(evs))
			for _, e := range evs {
				at := e.OccurredAt
				prof := "-"
				if e.ProfileID != nil {
					prof = *e.ProfileID
				}
				rows = append(rows, []string{fmtTime(&at), e.Type, prof, strconv.FormatInt(e.Files, 10), strconv.FormatInt(e.Pages, 10),
					strconv.FormatInt(e.Bytes, 10), strconv.FormatInt(e.Tokens, 10), strconv.FormatInt(e.Jobs, 10),
					strconv.FormatInt(e.Seconds, 10), strconv.FormatInt(e.StorageDeltaBytes, 10), e.IdempotencyKey})
			}
			return a.Printer().Print(evs, []string{"OCCURRED AT", "TYPE", "PROFILE", "FILES", "PAGES", "BYTES", "TOKENS", "JOBS",
				"SECONDS", "STORAGE DELTA", "KEY"}, rows)
		},
	}
	f := c.Flags()
	f.StringVar(&month, "month", "", "only this period (YYYY-MM)")
	f.StringVar(&typ, "type", "", "only this event type: "+strings.Join(usage.EventTypes, ", "))
	f.IntVar(&limit, "limit", 100, "at most this many events")
	_ = c.RegisterFlagCompletionFunc("type", func(*cobra.Command, []string, string) ([]string, cobra.ShellCompDirective) {
		return usage.EventTypes, cobra.ShellCompDirectiveNoFileComp
	})
	return c
}

func newUsageSetPlanCmd(a *App) *cobra.Command {
	var reason string
	var dry bool
	c := &cobra.Command{
		Use:   "set-plan ACCOUNT-EMAIL|ACCOUNT-ID|PROFILE-ID PLAN",
		Short: "Move an account to a plan (audited; records plan_upgraded or plan_downgraded)",
		Long: `Move an account to a plan. A profile id selects the profile's account: the plan
applies to the whole account (its dependents share it). The change is written
to the plan history, the usage ledger (plan_upgraded when the new plan has a
higher tier, else plan_downgraded) and the audit log with --actor and --reason.
Retired plans cannot be assigned.`,
		Example: `  v3ctl usage set-plan parent@example.com premium --reason "ticket 4411"
  v3ctl usage set-plan parent@example.com free --dry-run`,
		Args: cobra.ExactArgs(2),
		ValidArgsFunction: func(c *cobra.Command, args []string, s string) ([]string, cobra.ShellCompDirective) {
			if len(args) == 1 {
				return planCompletion(a)(c, args, s)
			}
			return nil, cobra.ShellCompDirectiveNoFileComp
		},
		RunE: func(c *cobra.Command, args []string) error {
			ctx := c.Context()
			pool, err := a.DB(ctx)
			if err != nil {
				return err
			}
			acct, err := usage.ResolveAccount(ctx, pool, args[0])
			if err != nil {
				return usageErr(err)
			}
			res, err := usage.SetPlan(ctx, pool, acct.ID, args[1], a.Actor(), reason, dry)
			if err != nil {
				return usageErr(err)
			}
			p := a.Printer()
			if p.Structured() {
				return p.Print(res, []string{"account_id", "old_plan", "new_plan", "change", "dry_run"},
					[][]string{{res.AccountID, res.OldPlan, res.NewPlan, res.Change, strconv.FormatBool(res.DryRun)}})
			}
			switch {
			case !res.Changed:
				a.Infof("%s is already on %s; nothing changed", acct.Label(), res.NewPlan)
			case dry:
				a.Infof("dry run: %s would move from %s to %s (%s); nothing was changed", acct.Label(), res.OldPlan, res.NewPlan, res.Change)
			default:
				a.Infof("%s: %s -> %s (%s, audited as %s)", acct.Label(), res.OldPlan, res.NewPlan, res.Change, a.Actor())
			}
			return nil
		},
	}
	c.Flags().StringVar(&reason, "reason", "", "why, recorded in the audit log and plan history")
	addDryRun(c, &dry)
	return c
}

func newUsagePlanHistoryCmd(a *App) *cobra.Command {
	return &cobra.Command{
		Use:   "plan-history ACCOUNT-EMAIL|ACCOUNT-ID|PROFILE-ID",
		Short: "An account's plan changes, newest first: when, from, to, upgrade or downgrade, who and why",
		Example: `  v3ctl usage plan-history parent@example.com
  v3ctl usage plan-history parent@example.com -o json`,
		Args: cobra.ExactArgs(1),
		RunE: func(c *cobra.Command, args []string) error {
			ctx := c.Context()
			pool, err := a.DB(ctx)
			if err != nil {
				return err
			}
			acct, err := usage.ResolveAccount(ctx, pool, args[0])
			if err != nil {
				return usageErr(err)
			}
			hs, err := usage.AccountPlanHistory(ctx, pool, acct.ID)
			if err != nil {
				return err
			}
			rows := make([][]string, len(hs))
			for i, h := range hs {
				rows[i] = []string{fmtTime(&h.ChangedAt), strPtr(h.OldPlan), h.NewPlan, h.Change, strPtr(h.ChangedBy), strPtr(h.Reason)}
			}
			if len(hs) == 0 && !a.Printer().Structured() {
				a.Infof("%s has no plan changes (an account without one is on its initial plan)", acct.Label())
				return nil
			}
			return a.Printer().Print(hs, []string{"changed_at", "from", "to", "change", "changed_by", "reason"}, rows)
		},
	}
}

func newUsageRebuildCmd(a *App) *cobra.Command {
	var month, reason string
	var dry bool
	c := &cobra.Command{
		Use:   "rebuild",
		Short: "Recompute the usage aggregates from the event ledger in one transaction (audited)",
		Long: `Recompute usage_monthly (every period, or --month) and the storage levels from
the append-only usage_events, in one transaction. New events wait until it
commits, so nothing is lost or counted twice. --dry-run reports how many values
would be corrected and changes nothing.`,
		Example: `  v3ctl usage rebuild --dry-run
  v3ctl usage rebuild --month 2026-11 --reason "drift found by verify"`,
		Args: cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			ctx := c.Context()
			m, err := monthFlag(month)
			if err != nil {
				return err
			}
			pool, err := a.DB(ctx)
			if err != nil {
				return err
			}
			res, err := usage.Rebuild(ctx, pool, m, a.Actor(), reason, dry)
			if err != nil {
				return err
			}
			p := a.Printer()
			if p.Structured() {
				period := "all"
				if res.Period != nil {
					period = *res.Period
				}
				return p.Print(res, []string{"period", "monthly_rows", "storage_rows", "corrected", "dry_run"}, [][]string{{period,
					strconv.FormatInt(res.MonthlyRows, 10), strconv.FormatInt(res.StorageRows, 10), strconv.FormatInt(res.Corrected, 10),
					strconv.FormatBool(res.DryRun)}})
			}
			scope := "every period"
			if res.Period != nil {
				scope = *res.Period
			}
			if dry {
				a.Infof("dry run: rebuilding %s would correct %d value(s) (%d monthly rows, %d storage levels); nothing was changed",
					scope, res.Corrected, res.MonthlyRows, res.StorageRows)
				return nil
			}
			a.Infof("rebuilt %s: %d monthly rows, %d storage levels, %d value(s) corrected (audited as %s)",
				scope, res.MonthlyRows, res.StorageRows, res.Corrected, a.Actor())
			return nil
		},
	}
	c.Flags().StringVar(&month, "month", "", "only this period (YYYY-MM); storage levels are always rebuilt")
	c.Flags().StringVar(&reason, "reason", "", "why, recorded in the audit log")
	addDryRun(c, &dry)
	return c
}

func newUsageVerifyCmd(a *App) *cobra.Command {
	var month string
	c := &cobra.Command{
		Use:   "verify",
		Short: "Compare the usage aggregates with the event ledger; exit 5 on drift, listing each difference",
		Long: `Recompute the aggregates from the events and compare them with the stored ones
(every period, or --month; storage levels always). Each difference is listed;
the exit code is 5 when there is any, 0 when none. Repair with v3ctl usage rebuild.`,
		Example: `  v3ctl usage verify
  v3ctl usage verify --month 2026-11 -o json
  v3ctl usage verify || v3ctl usage rebuild --reason "verify found drift"`,
		Args: cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			ctx := c.Context()
			m, err := monthFlag(month)
			if err != nil {
				return err
			}
			pool, err := a.DB(ctx)
			if err != nil {
				return err
			}
			ds, err := usage.Verify(ctx, pool, m)
			if err != nil {
				return err
			}
			p := a.Printer()
			if len(ds) == 0 {
				if p.Structured() {
					return p.Print(ds, []string{"aggregate", "profile_id", "period_start", "metric", "stored", "expected"}, nil)
				}
				a.Infof("no drift: the aggregates match the events")
				return nil
			}
			rows := make([][]string, 0, len(ds))
			for _, d := range ds {
				period := "-"
				if d.PeriodStart != nil {
					period = (*d.PeriodStart)[:7]
				}
				rows = append(rows, []string{d.Aggregate, d.ProfileID, period, d.Metric, missing(d.Stored), missing(d.Expected)})
			}
			if err := p.Print(ds, []string{"AGGREGATE", "PROFILE", "PERIOD", "METRIC", "STORED", "EXPECTED"}, rows); err != nil {
				return err
			}
			return WithCode(ExitDrift, fmt.Errorf("%d difference(s) between the aggregates and the events; repair with: v3ctl usage rebuild", len(ds)))
		},
	}
	c.Flags().StringVar(&month, "month", "", "only this period (YYYY-MM)")
	return c
}

func missing(p *int64) string {
	if p == nil {
		return "(missing)"
	}
	return strconv.FormatInt(*p, 10)
}
