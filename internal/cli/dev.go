package cli

import (
	"context"
	"encoding/json"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/spf13/cobra"

	"github.com/v3ctl/v3ctl/internal/bench"
	"github.com/v3ctl/v3ctl/internal/devdb"
	"github.com/v3ctl/v3ctl/internal/queue"
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
  v3ctl dev seed --jobs # demo accounts, documents and a batch of jobs
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
	cmd.AddCommand(up, down, status, url, reset, newDevSeedCmd(a))
	return cmd
}

func newDevSeedCmd(a *App) *cobra.Command {
	var jobs, dry bool
	cmd := &cobra.Command{
		Use:   "seed",
		Short: "Add demo accounts, profiles, plans and documents (idempotent); --jobs also enqueues a batch of jobs",
		Long: `seed fills the database with fictional demo data:

  alice@example.test  a family account (Alice and a child profile), plan premium,
                      3 documents; she shares the child's profile with bob (write)
  bob@example.test    one profile, plan basic, 2 documents
  carol@example.test  one profile, plan free, 1 document

The documents are shell_files rows whose storage_path names a file in
examples/documents (run the worker with V3_DOCUMENT_ROOT pointing there).
Their uploads are recorded as usage. Seeding again adds nothing (fixed ids);
a plan is only assigned to an account without one.

--jobs also enqueues a new batch on every run: text extraction
(shell_file_processing) for each document on fast_queue or standard_queue,
two AI summaries (ai_processing) and a system_maintenance job. Two payloads
carry "simulate" for the example handler (examples/extract-text): the imaging
report fails its first attempt and is retried, the referral letter is
corrupt and ends as a dead letter.

It seeds the database every command uses (the dev database unless another
is configured), or the dev instance named with --name. Only the dev database
(or another throwaway one: the bench and test instances, databases named
v3ctl_* or bench*) is seeded without --yes.`,
		Example: `  v3ctl dev seed
  v3ctl dev seed --jobs
  v3ctl dev seed --jobs --dry-run -o json`,
		Args: cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			ctx := c.Context()
			private := false // a named dev instance is private by definition
			if f := c.Flag("name"); f != nil && f.Changed {
				st, err := devdb.Status(ctx, devdb.Options{Name: f.Value.String()})
				if err != nil {
					return err
				}
				if !st.Running {
					return WithCode(ExitUnavailable, fmt.Errorf("dev instance %s is not running (start it with: v3ctl dev up --name %s)", st.Name, st.Name))
				}
				a.flagDatabaseURL = st.URL()
				private = true
			}
			u, err := a.URL(ctx)
			if err != nil {
				return err
			}
			if ok, why := bench.Throwaway(ctx, u); !ok && !private {
				if !a.Yes() {
					return UsageErrorf("refusing to seed: %s. Seeding adds fictional accounts and documents; use the dev database (v3ctl dev up), a database named v3ctl_* or bench*, or pass --yes", why)
				}
				a.Infof("warning: %s; seeding anyway because of --yes", why)
			}
			var res seedResult
			err = inTx(ctx, a, dry, func(tx pgx.Tx) error {
				if _, err := tx.Exec(ctx, devdb.SeedSQL); err != nil {
					return fmt.Errorf("seed: %w", err)
				}
				if jobs {
					corr := "demo-" + time.Now().UTC().Format("20060102T150405.000")
					for _, j := range devdb.SeedJobs(corr) {
						mr := j.MaxRetries
						r, err := queue.Enqueue(ctx, tx, queue.EnqueueParams{JobType: j.Type, JobName: j.Name,
							Payload: j.Payload, Category: j.Category, Priority: j.Priority, Lane: j.Lane,
							CorrelationID: corr, MaxRetries: &mr, PatientID: j.PatientID, ShellFileID: j.ShellFileID})
						if err != nil {
							return fmt.Errorf("enqueue %s: %w", j.Name, err)
						}
						res.Jobs = append(res.Jobs, seededJob{ID: r.JobID, Type: j.Type, Lane: j.Lane,
							Priority: j.Priority, Name: j.Name, Note: j.Note, CorrelationID: corr})
					}
				}
				accts, err := seedAccounts(ctx, tx)
				res.Accounts = accts
				return err
			})
			if err != nil {
				return err
			}
			res.DryRun = dry
			return printSeed(a, res)
		},
	}
	cmd.Flags().BoolVar(&jobs, "jobs", false, "also enqueue a new batch of demo jobs")
	addDryRun(cmd, &dry)
	return cmd
}

type seededAccount struct {
	Email     string   `json:"email" yaml:"email"`
	AccountID string   `json:"account_id" yaml:"account_id"`
	Plan      string   `json:"plan" yaml:"plan"`
	Profiles  []string `json:"profiles" yaml:"profiles"`
	Documents int      `json:"documents" yaml:"documents"`
	Shares    []string `json:"shares" yaml:"shares"`
}

type seededJob struct {
	ID            string `json:"job_id" yaml:"job_id"`
	Type          string `json:"job_type" yaml:"job_type"`
	Lane          string `json:"job_lane,omitempty" yaml:"job_lane,omitempty"`
	Priority      int    `json:"priority" yaml:"priority"`
	Name          string `json:"job_name" yaml:"job_name"`
	Note          string `json:"note,omitempty" yaml:"note,omitempty"`
	CorrelationID string `json:"correlation_id" yaml:"correlation_id"`
}

type seedResult struct {
	Accounts []seededAccount `json:"accounts" yaml:"accounts"`
	Jobs     []seededJob     `json:"jobs" yaml:"jobs"`
	DryRun   bool            `json:"dry_run" yaml:"dry_run"`
}

// seedAccounts describes the demo accounts as they are now.
func seedAccounts(ctx context.Context, tx pgx.Tx) ([]seededAccount, error) {
	rows, err := tx.Query(ctx, `
		SELECT u.id::text, u.email, coalesce(ap.plan_key, 'free'),
		  coalesce((SELECT json_agg(p.display_name || CASE WHEN p.profile_type = 'self' THEN '' ELSE ' (' || p.profile_type || ')' END
		                            ORDER BY p.profile_type = 'self' DESC, p.display_name)
		            FROM public.user_profiles p WHERE p.account_owner_id = u.id AND NOT p.archived), '[]'),
		  (SELECT count(*) FROM public.shell_files sf JOIN public.user_profiles p ON p.id = sf.patient_id
		    WHERE p.account_owner_id = u.id),
		  coalesce((SELECT json_agg(p.display_name || ' -> ' || g.email || ' (' || pap.permission_level || ')' ORDER BY g.email)
		            FROM public.profile_access_permissions pap
		            JOIN public.user_profiles p ON p.id = pap.profile_id
		            JOIN auth.users g ON g.id = pap.user_id
		            WHERE p.account_owner_id = u.id AND pap.is_active AND pap.revoked_at IS NULL), '[]')
		FROM auth.users u LEFT JOIN public.account_plans ap ON ap.account_id = u.id
		WHERE u.id = ANY ($1::uuid[])
		ORDER BY u.email`, devdb.SeedAccountIDs)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []seededAccount
	for rows.Next() {
		var s seededAccount
		var profiles, shares []byte
		if err := rows.Scan(&s.AccountID, &s.Email, &s.Plan, &profiles, &s.Documents, &shares); err != nil {
			return nil, err
		}
		if err := json.Unmarshal(profiles, &s.Profiles); err != nil {
			return nil, err
		}
		if err := json.Unmarshal(shares, &s.Shares); err != nil {
			return nil, err
		}
		out = append(out, s)
	}
	return out, rows.Err()
}

func printSeed(a *App, res seedResult) error {
	p := a.Printer()
	if res.Jobs == nil {
		res.Jobs = []seededJob{}
	}
	if p.Structured() && p.Format != "csv" {
		return p.Print(res, nil, nil)
	}
	if res.DryRun {
		a.Infof("dry run: nothing was changed")
	}
	rows := make([][]string, len(res.Accounts))
	for i, s := range res.Accounts {
		shares := strings.Join(s.Shares, ", ")
		if shares == "" {
			shares = "-"
		}
		rows[i] = []string{s.Email, s.Plan, strings.Join(s.Profiles, ", "), strconv.Itoa(s.Documents), shares}
	}
	if err := p.Print(res.Accounts, []string{"ACCOUNT", "PLAN", "PROFILES", "DOCUMENTS", "SHARES"}, rows); err != nil {
		return err
	}
	if len(res.Jobs) == 0 || p.Format == "csv" {
		return nil
	}
	fmt.Fprintln(a.Out)
	rows = make([][]string, len(res.Jobs))
	for i, j := range res.Jobs {
		lane := j.Lane
		if lane == "" {
			lane = "-"
		}
		rows[i] = []string{j.Type, lane, strconv.Itoa(j.Priority), j.Name, j.Note}
	}
	if err := p.Table([]string{"ENQUEUED", "LANE", "PRIORITY", "JOB", "NOTE"}, rows); err != nil {
		return err
	}
	verb := "enqueued"
	if res.DryRun {
		verb = "would be enqueued"
	}
	a.Infof("%d jobs %s (correlation id %s)", len(res.Jobs), verb, res.Jobs[0].CorrelationID)
	return nil
}
