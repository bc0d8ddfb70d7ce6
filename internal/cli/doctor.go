package cli

import (
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/v3ctl/v3ctl/internal/doctor"
	"github.com/v3ctl/v3ctl/internal/output"
)

func init() { Register(newDoctorCmd) }

func newDoctorCmd(a *App) *cobra.Command {
	var checks []string
	var openTxWarn, openTxCrit time.Duration
	var deadTuples int64
	var deadLetterWindow time.Duration
	cmd := &cobra.Command{
		Use:   "doctor",
		Short: "Check a V3 database: schema version, access rules, stuck jobs, capacity, usage drift, bloat",
		Long: `doctor runs read-only checks against the database (dev, test or Supabase) and
reports each finding as ok, warn or critical with a hint on what to do:

` + checkList() + `
Checks that need tables of a migration that is not applied report "skipped".
Function and table privileges are compared with the same rules the security
test suite proves (internal/security/rules.yaml, embedded in this binary).

Exit status: 0 all ok, 6 warnings, 7 critical problems (1 error, 9 database
unreachable). Run it as the schema owner or a service-level role.`,
		Example: `  v3ctl doctor
  v3ctl doctor -o json | jq '.[] | select(.severity != "ok")'
  v3ctl --context prod doctor --check function_privileges --check rls_disabled
  v3ctl doctor --open-tx-warn 1m   # CI gate: exit 6 on warnings, 7 on critical`,
		Args: cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			valid := doctor.CheckNames()
			for _, name := range checks {
				if err := oneOf("check", name, valid); err != nil {
					return err
				}
			}
			if openTxWarn < 0 || openTxCrit < 0 || deadTuples < 0 || deadLetterWindow < 0 {
				return UsageErrorf("--open-tx-warn, --open-tx-critical, --dead-tuples and --dead-letter-window must not be negative")
			}
			if deadLetterWindow == 0 {
				deadLetterWindow = -1 // all time
			}
			u, err := a.URL(c.Context())
			if err != nil {
				return err
			}
			pool, err := a.DB(c.Context())
			if err != nil {
				return err
			}
			fs := doctor.Run(c.Context(), pool, doctor.Options{
				URL: u, Only: checks, OpenTxWarn: openTxWarn, OpenTxCritical: openTxCrit, DeadTuplesWarn: deadTuples,
				DeadLetterWindow: deadLetterWindow,
			})
			if err := printFindings(a, fs); err != nil {
				return err
			}
			var nWarn, nCrit int
			for _, f := range fs {
				switch f.Severity {
				case doctor.Warn:
					nWarn++
				case doctor.Critical:
					nCrit++
				}
			}
			switch doctor.Worst(fs) {
			case doctor.Critical:
				a.Infof("doctor: %d critical, %d warning(s)", nCrit, nWarn)
				return &ExitErr{Code: ExitDoctorCritical}
			case doctor.Warn:
				a.Infof("doctor: %d warning(s)", nWarn)
				return &ExitErr{Code: ExitDoctorWarn}
			}
			a.Infof("doctor: all %d checks ok", len(fs))
			return nil
		},
	}
	cmd.Flags().StringSliceVar(&checks, "check", nil, "run only these checks (repeatable): "+strings.Join(doctor.CheckNames(), ", "))
	cmd.Flags().DurationVar(&openTxWarn, "open-tx-warn", 5*time.Minute, "warn when a transaction has been open longer than this")
	cmd.Flags().DurationVar(&openTxCrit, "open-tx-critical", time.Hour, "critical when a transaction has been open longer than this")
	cmd.Flags().Int64Var(&deadTuples, "dead-tuples", 10000, "warn when job_queue has more dead tuples than this (and than 20% of its live tuples)")
	cmd.Flags().DurationVar(&deadLetterWindow, "dead-letter-window", 24*time.Hour, "report jobs dead-lettered within this window (0: every dead letter, however old)")
	_ = cmd.RegisterFlagCompletionFunc("check", func(*cobra.Command, []string, string) ([]string, cobra.ShellCompDirective) {
		return doctor.CheckNames(), cobra.ShellCompDirectiveNoFileComp
	})
	return cmd
}

func checkList() string {
	var b strings.Builder
	for _, c := range doctor.Checks() {
		b.WriteString("  " + c.Name + strings.Repeat(" ", max(1, 22-len(c.Name))) + c.Description + "\n")
	}
	return b.String()
}

func printFindings(a *App, fs []doctor.Finding) error {
	p := a.Printer()
	if fs == nil {
		fs = []doctor.Finding{}
	}
	rows := make([][]string, 0, len(fs))
	for _, f := range fs {
		sev := string(f.Severity)
		switch f.Severity {
		case doctor.OK:
			sev = p.Paint(output.Styles.OK, sev)
		case doctor.Warn:
			sev = p.Paint(output.Styles.Warn, sev)
		case doctor.Critical:
			sev = p.Paint(output.Styles.Err, sev)
		}
		hint := f.Hint
		if f.Severity == doctor.OK {
			hint = ""
		}
		if !p.Structured() && hint == "" {
			hint = "-"
		}
		rows = append(rows, []string{sev, f.Check, f.Message, hint})
	}
	return p.Print(fs, []string{"SEVERITY", "CHECK", "MESSAGE", "HINT"}, rows)
}
