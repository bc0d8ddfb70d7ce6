package cli

import (
	"sort"
	"strconv"
	"strings"

	"github.com/spf13/cobra"

	"github.com/v3ctl/v3ctl/internal/usage"
)

func init() { Register(newPlansCmd) }

func newPlansCmd(a *App) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "plans",
		Short: "List, show, create, update and retire subscription plans (audited)",
		Long: `Subscription plans set the monthly limits of an account: shell files, pages and
AI tokens per calendar month (UTC) and a storage level. A limit may be
"unlimited" (NULL), which is never over the limit. Prices are exact cents;
storage is exact bytes (given in MB, 1 MB = 1,048,576 bytes, or in bytes).
Accounts without an assignment are on "free". Every change is audited.`,
		Example: `  v3ctl plans list
  v3ctl plans show premium -o json
  v3ctl plans create family --name Family --files 300 --pages 3000 --ai-tokens 1500000 --storage-mb 3000 --price 19.99
  v3ctl plans update basic --ai-tokens 750000 --reason "more AI for basic"
  v3ctl plans retire family --dry-run`,
	}
	cmd.AddCommand(newPlansListCmd(a), newPlansShowCmd(a), newPlanWriteCmd(a, true), newPlanWriteCmd(a, false), newPlansRetireCmd(a))
	return cmd
}

func planRows(ps []usage.Plan) [][]string {
	rows := make([][]string, 0, len(ps))
	for _, p := range ps {
		status := "active"
		if !p.Active {
			status = "retired"
		}
		rows = append(rows, []string{p.Key, p.DisplayName, limitText(p.ShellFilesLimit), limitText(p.PagesLimit),
			limitText(p.AITokensLimit), storageLimitText(p.StorageLimitBytes), p.Price(), strconv.Itoa(p.TierRank),
			strconv.FormatInt(p.Accounts, 10), status})
	}
	return rows
}

var planHeaders = []string{"PLAN", "NAME", "FILES/MONTH", "PAGES/MONTH", "AI TOKENS/MONTH", "STORAGE", "PRICE", "RANK", "ACCOUNTS", "STATUS"}

func newPlansListCmd(a *App) *cobra.Command {
	var all bool
	c := &cobra.Command{
		Use:     "list",
		Aliases: []string{"ls"},
		Short:   "List plans by tier with their limits, price and number of accounts",
		Example: `  v3ctl plans list
  v3ctl plans list --all -o csv`,
		Args: cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			pool, err := a.DB(c.Context())
			if err != nil {
				return err
			}
			ps, err := usage.ListPlans(c.Context(), pool, all)
			if err != nil {
				return err
			}
			return a.Printer().Print(ps, planHeaders, planRows(ps))
		},
	}
	c.Flags().BoolVar(&all, "all", false, "include retired plans")
	return c
}

func printPlan(a *App, p usage.Plan, v any) error {
	pr := a.Printer()
	if pr.Structured() {
		return pr.Print(v, planHeaders, planRows([]usage.Plan{p}))
	}
	status := "active"
	if !p.Active {
		status = "retired"
		if p.RetiredAt != nil {
			status += " " + fmtTime(p.RetiredAt)
		}
	}
	storage := storageLimitText(p.StorageLimitBytes)
	if p.StorageLimitBytes != nil {
		storage += " (" + usage.FormatCount(*p.StorageLimitBytes) + " bytes)"
	}
	pr.KV([][2]string{
		{"Plan", p.Key},
		{"Name", p.DisplayName},
		{"Shell files / month", limitText(p.ShellFilesLimit)},
		{"Pages / month", limitText(p.PagesLimit)},
		{"AI tokens / month", limitText(p.AITokensLimit)},
		{"Storage", storage},
		{"Price", p.Price() + " (" + strconv.FormatInt(p.PriceCents, 10) + " cents)"},
		{"Tier rank", strconv.Itoa(p.TierRank)},
		{"Accounts", strconv.FormatInt(p.Accounts, 10)},
		{"Status", status},
	})
	return nil
}

func newPlansShowCmd(a *App) *cobra.Command {
	return &cobra.Command{
		Use:               "show PLAN",
		Short:             "Show one plan",
		Example:           `  v3ctl plans show free`,
		Args:              cobra.ExactArgs(1),
		ValidArgsFunction: planCompletion(a),
		RunE: func(c *cobra.Command, args []string) error {
			pool, err := a.DB(c.Context())
			if err != nil {
				return err
			}
			p, err := usage.GetPlan(c.Context(), pool, args[0])
			if err != nil {
				return usageErr(err)
			}
			return printPlan(a, p, p)
		},
	}
}

// planFlags holds the raw create/update flags.
type planFlags struct {
	name, files, pages, tokens, storageMB, storageBytes, price, currency string
	rank                                                                 int
	reason                                                               string
	dry                                                                  bool
}

func (pf *planFlags) fields(c *cobra.Command, create bool) (usage.PlanFields, error) {
	var f usage.PlanFields
	fl := c.Flags()
	if fl.Changed("name") {
		f.DisplayName = &pf.name
	}
	var err error
	for _, x := range []struct {
		flag string
		val  string
		dst  *usage.Limit
	}{{"files", pf.files, &f.ShellFilesLimit}, {"pages", pf.pages, &f.PagesLimit}, {"ai-tokens", pf.tokens, &f.AITokensLimit}} {
		if fl.Changed(x.flag) {
			if *x.dst, err = usage.ParseLimit(x.val); err != nil {
				return f, UsageErrorf("--%s: %v", x.flag, err)
			}
		}
	}
	switch {
	case fl.Changed("storage-mb") && fl.Changed("storage-bytes"):
		return f, UsageErrorf("give --storage-mb or --storage-bytes, not both")
	case fl.Changed("storage-mb"):
		if f.StorageLimitBytes, err = usage.ParseStorageMB(pf.storageMB); err != nil {
			return f, UsageErrorf("--storage-mb: %v", err)
		}
	case fl.Changed("storage-bytes"):
		if f.StorageLimitBytes, err = usage.ParseLimit(pf.storageBytes); err != nil {
			return f, UsageErrorf("--storage-bytes: %v", err)
		}
	}
	if fl.Changed("price") {
		cents, err := usage.ParsePriceCents(pf.price)
		if err != nil {
			return f, UsageErrorf("--price: %v", err)
		}
		f.PriceCents = &cents
	}
	if fl.Changed("currency") {
		cur := strings.ToUpper(strings.TrimSpace(pf.currency))
		if len(cur) != 3 {
			return f, UsageErrorf("--currency %q: use a 3-letter ISO 4217 code such as USD or EUR", pf.currency)
		}
		f.Currency = &cur
	}
	if fl.Changed("rank") {
		f.TierRank = &pf.rank
	}
	if create {
		var missing []string
		for flag, set := range map[string]bool{"--files": f.ShellFilesLimit.Set, "--pages": f.PagesLimit.Set,
			"--ai-tokens": f.AITokensLimit.Set, "--storage-mb or --storage-bytes": f.StorageLimitBytes.Set, "--price": f.PriceCents != nil} {
			if !set {
				missing = append(missing, flag)
			}
		}
		if len(missing) > 0 {
			sort.Strings(missing)
			return f, UsageErrorf("a new plan needs %s (limits take a number or 'unlimited')", strings.Join(missing, ", "))
		}
	} else if f.Empty() {
		return f, UsageErrorf("nothing to update: give at least one of --name, --files, --pages, --ai-tokens, --storage-mb, --storage-bytes, --price, --currency, --rank")
	}
	return f, nil
}

func newPlanWriteCmd(a *App, create bool) *cobra.Command {
	pf := &planFlags{}
	use, short, example := "update PLAN", "Change a plan's name, limits, price or rank (audited; applies to its accounts at once)",
		`  v3ctl plans update basic --ai-tokens 750000 --reason "more AI for basic"
  v3ctl plans update premium --storage-mb unlimited --dry-run`
	if create {
		use, short, example = "create PLAN", "Create a plan (audited); every limit and the price must be given",
			`  v3ctl plans create family --name Family --files 300 --pages 3000 --ai-tokens 1500000 --storage-mb 3000 --price 19.99 --rank 15
  v3ctl plans create trial --files 5 --pages 50 --ai-tokens 10000 --storage-mb 50 --price 0 --dry-run`
	}
	c := &cobra.Command{
		Use:     use,
		Short:   short,
		Example: example,
		Args:    cobra.ExactArgs(1),
		RunE: func(c *cobra.Command, args []string) error {
			f, err := pf.fields(c, create)
			if err != nil {
				return err
			}
			pool, err := a.DB(c.Context())
			if err != nil {
				return err
			}
			var ch usage.PlanChange
			if create {
				ch, err = usage.CreatePlan(c.Context(), pool, args[0], f, a.Actor(), pf.reason, pf.dry)
			} else {
				ch, err = usage.UpdatePlan(c.Context(), pool, args[0], f, a.Actor(), pf.reason, pf.dry)
			}
			if err != nil {
				return usageErr(err)
			}
			verb := "updated"
			if create {
				verb = "created"
			}
			switch {
			case !ch.Changed:
				a.Infof("plan %s already has these values; nothing changed", ch.Plan.Key)
			case pf.dry:
				a.Infof("dry run: plan %s would be %s; nothing was changed", ch.Plan.Key, verb)
			default:
				a.Infof("plan %s %s (audited as %s)", ch.Plan.Key, verb, a.Actor())
			}
			return printPlan(a, ch.Plan, ch)
		},
	}
	fl := c.Flags()
	fl.StringVar(&pf.name, "name", "", "display name")
	fl.StringVar(&pf.files, "files", "", "shell files per month: a number or 'unlimited'")
	fl.StringVar(&pf.pages, "pages", "", "pages per month: a number or 'unlimited'")
	fl.StringVar(&pf.tokens, "ai-tokens", "", "AI tokens per month: a number or 'unlimited'")
	fl.StringVar(&pf.storageMB, "storage-mb", "", "storage limit in MB (1 MB = 1,048,576 bytes) or 'unlimited'")
	fl.StringVar(&pf.storageBytes, "storage-bytes", "", "storage limit in exact bytes or 'unlimited'")
	fl.StringVar(&pf.price, "price", "", "monthly price, e.g. 9.99 (stored as exact cents)")
	fl.StringVar(&pf.currency, "currency", "USD", "ISO 4217 currency code")
	fl.IntVar(&pf.rank, "rank", 0, "tier rank: a move to a higher rank is an upgrade (default for create: above the highest)")
	fl.StringVar(&pf.reason, "reason", "", "why, recorded in the audit log")
	addDryRun(c, &pf.dry)
	if !create {
		c.ValidArgsFunction = planCompletion(a)
	}
	return c
}

func newPlansRetireCmd(a *App) *cobra.Command {
	var reason string
	var dry bool
	c := &cobra.Command{
		Use:   "retire PLAN",
		Short: "Retire a plan: no new assignments; accounts on it keep it (audited)",
		Long: `Retire a plan: it can no longer be assigned with usage set-plan. Accounts already
on it keep it and its limits until they are moved. "free" cannot be retired:
it is the plan of every account without an assignment.`,
		Example: `  v3ctl plans retire legacy_basic --reason "replaced by basic"
  v3ctl plans retire legacy_basic --dry-run`,
		Args:              cobra.ExactArgs(1),
		ValidArgsFunction: planCompletion(a),
		RunE: func(c *cobra.Command, args []string) error {
			pool, err := a.DB(c.Context())
			if err != nil {
				return err
			}
			ch, err := usage.RetirePlan(c.Context(), pool, args[0], a.Actor(), reason, dry)
			if err != nil {
				return usageErr(err)
			}
			switch {
			case !ch.Changed:
				a.Infof("plan %s is already retired; nothing changed", ch.Plan.Key)
			case dry:
				a.Infof("dry run: plan %s would be retired (%d account(s) keep it); nothing was changed", ch.Plan.Key, ch.Accounts)
			default:
				a.Infof("plan %s retired; %d account(s) keep it (audited as %s)", ch.Plan.Key, ch.Accounts, a.Actor())
			}
			if a.Printer().Structured() {
				return printPlan(a, ch.Plan, ch)
			}
			return nil
		},
	}
	c.Flags().StringVar(&reason, "reason", "", "why, recorded in the audit log")
	addDryRun(c, &dry)
	return c
}
