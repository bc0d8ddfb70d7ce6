package cli

import (
	"fmt"

	"github.com/spf13/cobra"

	"github.com/v3ctl/v3ctl/internal/devdb"
)

func init() { Register(newDevCmd) }

func newDevCmd(a *App) *cobra.Command {
	var name string
	cmd := &cobra.Command{
		Use:   "dev",
		Short: "Run a private PostgreSQL for development and demos",
		Long: `dev runs a private PostgreSQL server from the server binaries installed on this
machine (PATH, pg_config --bindir, /usr/lib/postgresql/*/bin, Homebrew). Its data
lives under your data directory ($XDG_DATA_HOME/v3ctl/dev, or ~/.local/share/v3ctl/dev;
/var/lib/v3ctl/dev when run as root, with the server running as the unprivileged
postgres user). It listens on 127.0.0.1 only, on a free port chosen once.

When no database URL or context is configured and the dev database is up,
every other command uses it (and says so on stderr).`,
		Example: `  v3ctl dev up          # start (idempotent)
  v3ctl dev url         # print the connection URL
  psql "$(v3ctl dev url)"
  v3ctl dev reset --yes # delete all data and start over`,
	}
	cmd.PersistentFlags().StringVar(&name, "name", "dev", "instance name (several can run side by side)")
	opts := func() devdb.Options { return devdb.Options{Name: name} }

	show := func(st *devdb.State, msg string) error {
		p := a.Printer()
		if p.Structured() {
			return p.Print(st, nil, nil)
		}
		if msg != "" {
			a.Infof("%s", msg)
		}
		status := "stopped"
		if st.Running {
			status = p.Paint(stylesOK(), "running")
		}
		pairs := [][2]string{{"instance", st.Name}, {"status", status}, {"directory", st.Dir}}
		if st.DataDir != "" {
			pairs = append(pairs, [2]string{"postgres", fmt.Sprintf("%s (%s)", st.Version, st.BinDir)})
			pairs = append(pairs, [2]string{"url", st.URL()})
		}
		p.KV(pairs)
		return nil
	}

	up := &cobra.Command{
		Use:   "up",
		Short: "Initialise (first time) and start the dev database; harmless when it is already running",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if a.ErrTTY {
				a.Infof("starting the dev database...")
			}
			st, started, err := devdb.Up(cmd.Context(), opts())
			if err != nil {
				return err
			}
			msg := "dev database already running"
			if started {
				msg = "dev database started"
			}
			return show(st, msg)
		},
	}
	down := &cobra.Command{
		Use:   "down",
		Short: "Stop the dev database (data is kept)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			st, stopped, err := devdb.Down(cmd.Context(), opts())
			if err != nil {
				return err
			}
			if stopped {
				a.Infof("dev database stopped")
			} else {
				a.Infof("dev database was not running")
			}
			if a.Printer().Structured() {
				return a.Printer().Print(st, nil, nil)
			}
			return nil
		},
	}
	status := &cobra.Command{
		Use:   "status",
		Short: "Show whether the dev database is running, where, and its URL",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			st, err := devdb.Status(cmd.Context(), opts())
			if err != nil {
				return err
			}
			return show(st, "")
		},
	}
	url := &cobra.Command{
		Use:   "url",
		Short: "Print the dev database's connection URL",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			st, err := devdb.Status(cmd.Context(), opts())
			if err != nil {
				return err
			}
			if !st.Running {
				return WithCode(ExitUnavailable, devdb.ErrNotRunning)
			}
			fmt.Fprintln(a.Out, st.URL())
			return nil
		},
	}
	reset := &cobra.Command{
		Use:   "reset",
		Short: "Stop the dev database, delete its data and start an empty one",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := a.Confirm("this deletes every database of the dev instance " + name); err != nil {
				return err
			}
			if err := devdb.Reset(cmd.Context(), opts()); err != nil {
				return err
			}
			st, _, err := devdb.Up(cmd.Context(), opts())
			if err != nil {
				return err
			}
			return show(st, "dev database reset")
		},
	}
	cmd.AddCommand(up, down, status, url, reset)
	return cmd
}
