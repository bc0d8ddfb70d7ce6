package cli

import (
	"errors"
	"fmt"
	"strings"

	"github.com/spf13/cobra"

	"github.com/v3ctl/v3ctl/internal/migrate"
)

func init() { Register(newMigrateCmd) }

func newMigrateCmd(a *App) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "migrate",
		Short: "Apply, roll back and check the V3 schema (embedded goose migrations)",
		Long: `migrate manages the V3 schema, which ships inside this binary. Runs hold a
session-level advisory lock: two "migrate up" at the same time are safe (one
applies, the other waits, then finds nothing to do). Applied versions are
recorded in ` + migrate.VersionTable + `.

Use a direct connection or Supabase's session-mode pooler (port 5432); the
transaction-mode pooler (port 6543) cannot hold the advisory lock.`,
		Example: `  v3ctl migrate up
  v3ctl migrate up --dry-run        # print the SQL that would run
  v3ctl migrate status -o json
  v3ctl migrate validate            # CI gate: exit 3 when migrations are pending
  v3ctl migrate down --to 0 --yes   # roll everything back`,
	}
	open := func(c *cobra.Command) (*migrate.Migrator, error) {
		u, err := a.URL(c.Context())
		if err != nil {
			return nil, err
		}
		m, err := migrate.Open(c.Context(), u, a.Logger)
		if err != nil {
			return nil, WithCode(ExitUnavailable, err)
		}
		return m, nil
	}
	printResults := func(rs []migrate.Result, none string) error {
		p := a.Printer()
		if p.Structured() {
			if rs == nil {
				rs = []migrate.Result{}
			}
			return p.Print(rs, nil, nil)
		}
		if len(rs) == 0 {
			a.Infof("%s", none)
			return nil
		}
		for _, r := range rs {
			a.Infof("%-4s %s (%.2fs)", r.Direction, r.Name, r.Seconds)
		}
		return nil
	}
	versionsOf := func(st []migrate.Status) []int64 {
		var vs []int64
		for _, s := range st {
			vs = append(vs, s.Version)
		}
		return vs
	}

	var upTo int64
	var upDry bool
	up := &cobra.Command{
		Use:   "up",
		Short: "Apply pending migrations (all, or up to --to)",
		Args:  cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			m, err := open(c)
			if err != nil {
				return err
			}
			defer m.Close()
			if upDry {
				pending, err := m.Pending(c.Context())
				if err != nil {
					return err
				}
				var vs []int64
				for _, s := range pending {
					if upTo == 0 || s.Version <= upTo {
						vs = append(vs, s.Version)
					}
				}
				if len(vs) == 0 {
					a.Infof("dry run: nothing to apply")
					return nil
				}
				sql, err := migrate.SQLFor(migrate.FS(), vs, "up")
				if err != nil {
					return err
				}
				fmt.Fprint(a.Out, sql)
				a.Infof("dry run: %d migration(s) would be applied; nothing was changed", len(vs))
				return nil
			}
			rs, err := m.Up(c.Context(), upTo)
			if err != nil {
				return err
			}
			return printResults(rs, "schema is up to date")
		},
	}
	up.Flags().Int64Var(&upTo, "to", 0, "apply up to and including this version")
	addDryRun(up, &upDry)

	var downTo int64 = -1
	var downDry bool
	down := &cobra.Command{
		Use:   "down",
		Short: "Roll back the newest migration, or down to --to VERSION (0 = everything)",
		Args:  cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			m, err := open(c)
			if err != nil {
				return err
			}
			defer m.Close()
			st, err := m.Status(c.Context())
			if err != nil {
				return err
			}
			var vs []int64
			for i := len(st) - 1; i >= 0; i-- {
				if !st[i].Applied {
					continue
				}
				if downTo < 0 && len(vs) == 1 {
					break
				}
				if downTo >= 0 && st[i].Version <= downTo {
					break
				}
				vs = append(vs, st[i].Version)
			}
			if len(vs) == 0 {
				a.Infof("nothing to roll back")
				return nil
			}
			if downDry {
				sql, err := migrate.SQLFor(migrate.FS(), vs, "down")
				if err != nil {
					return err
				}
				fmt.Fprint(a.Out, sql)
				a.Infof("dry run: %d migration(s) would be rolled back; nothing was changed", len(vs))
				return nil
			}
			if err := a.Confirm(fmt.Sprintf("rolling back %d migration(s) drops their tables and data", len(vs))); err != nil {
				return err
			}
			rs, err := m.Down(c.Context(), downTo, false)
			if err != nil {
				return err
			}
			return printResults(rs, "nothing to roll back")
		},
	}
	down.Flags().Int64Var(&downTo, "to", -1, "roll back every migration newer than this version (0 = all)")
	addDryRun(down, &downDry)

	status := &cobra.Command{
		Use:   "status",
		Short: "List every migration and whether it is applied",
		Args:  cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			m, err := open(c)
			if err != nil {
				return err
			}
			defer m.Close()
			st, err := m.Status(c.Context())
			if err != nil {
				return err
			}
			p := a.Printer()
			rows := make([][]string, 0, len(st))
			for _, s := range st {
				state := p.Paint(stylesWarn(), "pending")
				if s.Applied {
					state = p.Paint(stylesOK(), "applied")
				}
				rows = append(rows, []string{fmt.Sprint(s.Version), s.Name, state, fmtTime(s.AppliedAt)})
			}
			return p.Print(st, []string{"VERSION", "NAME", "STATE", "APPLIED AT"}, rows)
		},
	}

	version := &cobra.Command{
		Use:   "version",
		Short: "Print the database's schema version and the newest this binary carries",
		Args:  cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			m, err := open(c)
			if err != nil {
				return err
			}
			defer m.Close()
			cur, latest, err := m.Version(c.Context())
			if err != nil {
				return err
			}
			p := a.Printer()
			if p.Structured() {
				return p.Print(map[string]int64{"database": cur, "binary": latest}, nil, nil)
			}
			fmt.Fprintf(a.Out, "database: %d\nbinary:   %d\n", cur, latest)
			return nil
		},
	}

	redo := &cobra.Command{
		Use:   "redo",
		Short: "Roll back the newest applied migration and apply it again",
		Args:  cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			if err := a.Confirm("redo rolls back the newest migration (dropping what it created) and applies it again"); err != nil {
				return err
			}
			m, err := open(c)
			if err != nil {
				return err
			}
			defer m.Close()
			rs, err := m.Redo(c.Context())
			if err != nil {
				return err
			}
			return printResults(rs, "nothing to redo")
		},
	}

	validate := &cobra.Command{
		Use:   "validate",
		Short: "Check the database is at this binary's schema version (CI gate)",
		Long: `validate changes nothing. Exit codes:
  0  the schema is up to date
  3  migrations are pending (run: v3ctl migrate up)
  4  the database has versions this binary does not know (upgrade v3ctl)
  9  the database cannot be reached`,
		Args: cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			m, err := open(c)
			if err != nil {
				return err
			}
			defer m.Close()
			pending, err := m.Pending(c.Context())
			if err != nil {
				return err
			}
			unknown, err := m.Unknown(c.Context())
			if err != nil {
				return err
			}
			cur, latest, err := m.Version(c.Context())
			if err != nil {
				return err
			}
			res := struct {
				OK       bool    `json:"ok"`
				Database int64   `json:"database_version"`
				Binary   int64   `json:"binary_version"`
				Pending  []int64 `json:"pending"`
				Unknown  []int64 `json:"unknown"`
			}{len(pending) == 0 && len(unknown) == 0, cur, latest, versionsOf(pending), unknown}
			if res.Pending == nil {
				res.Pending = []int64{}
			}
			if res.Unknown == nil {
				res.Unknown = []int64{}
			}
			p := a.Printer()
			if p.Structured() {
				if err := p.Print(res, nil, nil); err != nil {
					return err
				}
			}
			switch {
			case len(unknown) > 0:
				if !p.Structured() {
					a.Infof("the database has migration(s) %v that this binary (schema %d) does not know: upgrade v3ctl", unknown, latest)
				}
				return &ExitErr{Code: ExitAhead}
			case len(pending) > 0:
				if !p.Structured() {
					var names []string
					for _, s := range pending {
						names = append(names, s.Name)
					}
					a.Infof("%d migration(s) pending: %s (run: v3ctl migrate up)", len(pending), strings.Join(names, ", "))
				}
				return &ExitErr{Code: ExitPending}
			}
			if !p.Structured() {
				fmt.Fprintf(a.Out, "schema is up to date (version %d)\n", cur)
			}
			return nil
		},
	}
	cmd.AddCommand(up, down, status, version, redo, validate)
	return cmd
}

var _ = errors.New
