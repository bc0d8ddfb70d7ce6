package cli

import (
	"fmt"

	"github.com/spf13/cobra"

	"github.com/v3ctl/v3ctl/internal/config"
	"github.com/v3ctl/v3ctl/internal/db"
)

func init() { Register(newConfigCmd) }

func newConfigCmd(a *App) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "config",
		Short: "View the configuration file and manage contexts (named databases)",
		Long: `The configuration file ($XDG_CONFIG_HOME/v3ctl/config.yaml, or --config) holds
named contexts, each a database URL, and the current one. Which database a
command talks to, first match wins:
  --database-url, --context, V3CTL_DATABASE_URL, DATABASE_URL, V3CTL_CONTEXT,
  current-context in the file, then the dev database if it is running.
Other keys (worker.*, handlers) can also be set in the file or as V3CTL_* env.
Passwords are never printed.`,
		Example: `  v3ctl config set-context prod --database-url "postgres://postgres:PW@db.xyz.supabase.co:5432/postgres"
  v3ctl config use-context prod
  v3ctl config view`,
	}

	view := &cobra.Command{
		Use:   "view",
		Short: "Print the configuration with passwords hidden",
		Args:  cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			cf, err := a.LoadConfig()
			if err != nil {
				return err
			}
			type ctxView struct {
				Name        string `json:"name"`
				DatabaseURL string `json:"database_url"`
				Description string `json:"description,omitempty"`
				Current     bool   `json:"current"`
			}
			out := struct {
				Path           string         `json:"path"`
				CurrentContext string         `json:"current_context"`
				Contexts       []ctxView      `json:"contexts"`
				Other          map[string]any `json:"other,omitempty"`
			}{Path: a.ConfigPath, CurrentContext: cf.CurrentContext, Contexts: []ctxView{}, Other: cf.Rest}
			rows := [][]string{}
			for _, n := range cf.Names() {
				ctx := cf.Contexts[n]
				v := ctxView{Name: n, DatabaseURL: db.Redact(ctx.DatabaseURL), Description: ctx.Description, Current: n == cf.CurrentContext}
				out.Contexts = append(out.Contexts, v)
				cur := ""
				if v.Current {
					cur = "*"
				}
				rows = append(rows, []string{cur, n, v.DatabaseURL, v.Description})
			}
			p := a.Printer()
			if p.Structured() {
				return p.Print(out, nil, nil)
			}
			a.Infof("config file: %s", a.ConfigPath)
			return p.Print(out, []string{"CURRENT", "NAME", "DATABASE URL", "DESCRIPTION"}, rows)
		},
	}

	use := &cobra.Command{
		Use:   "use-context NAME",
		Short: "Make NAME the current context",
		Args:  cobra.ExactArgs(1),
		ValidArgsFunction: func(*cobra.Command, []string, string) ([]string, cobra.ShellCompDirective) {
			cf, err := a.LoadConfig()
			if err != nil {
				return nil, cobra.ShellCompDirectiveNoFileComp
			}
			return cf.Names(), cobra.ShellCompDirectiveNoFileComp
		},
		RunE: func(c *cobra.Command, args []string) error {
			cf, err := a.LoadConfig()
			if err != nil {
				return err
			}
			if _, ok := cf.Contexts[args[0]]; !ok {
				return UsageErrorf("unknown context %q; known: %v (create it with: v3ctl config set-context %s --database-url URL)", args[0], cf.Names(), args[0])
			}
			cf.CurrentContext = args[0]
			if err := cf.Save(a.ConfigPath); err != nil {
				return err
			}
			a.Infof("current context is now %s", args[0])
			return nil
		},
	}

	var desc string
	var setCurrent bool
	set := &cobra.Command{
		Use:   "set-context NAME --database-url URL",
		Short: "Create or update a context",
		Args:  cobra.ExactArgs(1),
		RunE: func(c *cobra.Command, args []string) error {
			if err := config.ValidContextName(args[0]); err != nil {
				return &ExitErr{Code: ExitUsage, Err: err}
			}
			cf, err := a.LoadConfig()
			if err != nil {
				return err
			}
			ctx := cf.Contexts[args[0]]
			if a.flagDatabaseURL != "" {
				ctx.DatabaseURL = a.flagDatabaseURL
			}
			if c.Flags().Changed("description") {
				ctx.Description = desc
			}
			if ctx.DatabaseURL == "" {
				return UsageErrorf("context %q needs --database-url", args[0])
			}
			cf.Contexts[args[0]] = ctx
			if setCurrent || cf.CurrentContext == "" {
				cf.CurrentContext = args[0]
			}
			if err := cf.Save(a.ConfigPath); err != nil {
				return err
			}
			a.Infof("context %s: %s", args[0], db.Redact(ctx.DatabaseURL))
			return nil
		},
	}
	set.Flags().StringVar(&desc, "description", "", "a note shown by config view")
	set.Flags().BoolVar(&setCurrent, "use", false, "also make it the current context")

	cmd.AddCommand(view, use, set)
	return cmd
}

var _ = fmt.Sprint
