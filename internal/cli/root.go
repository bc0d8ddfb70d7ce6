// Package cli is v3ctl's command tree. Commands are thin: parse flags, call a
// domain package, print. Each noun lives in its own file and registers itself
// with Register, so adding a command touches no other file.
package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/user"
	"sort"
	"strings"
	"sync"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/spf13/cobra"
	"github.com/spf13/viper"

	"github.com/v3ctl/v3ctl/internal/config"
	"github.com/v3ctl/v3ctl/internal/db"
	"github.com/v3ctl/v3ctl/internal/devdb"
	"github.com/v3ctl/v3ctl/internal/output"
)

// Exit codes. They are part of the interface (scripts and CI gates rely on
// them) and documented in the README; never renumber.
const (
	ExitOK             = 0
	ExitError          = 1
	ExitUsage          = 2 // bad flag, argument or value
	ExitPending        = 3 // migrate validate: migrations pending
	ExitAhead          = 4 // migrate validate: database has versions this binary does not know
	ExitDrift          = 5 // usage verify: aggregates differ from events
	ExitDoctorWarn     = 6 // doctor: warnings found
	ExitDoctorCritical = 7 // doctor: critical problems found
	ExitNotFound       = 8 // the named object does not exist
	ExitUnavailable    = 9 // the database cannot be reached
)

// ExitErr carries an exit code. A nil Err with a non-zero code exits
// silently (the command already explained itself).
type ExitErr struct {
	Code int
	Err  error
}

func (e *ExitErr) Error() string {
	if e.Err == nil {
		return fmt.Sprintf("exit status %d", e.Code)
	}
	return e.Err.Error()
}
func (e *ExitErr) Unwrap() error { return e.Err }

// UsageErrorf is an error in how the command was called (exit 2).
func UsageErrorf(format string, a ...any) error {
	return &ExitErr{Code: ExitUsage, Err: fmt.Errorf(format, a...)}
}

// WithCode wraps err with an exit code.
func WithCode(code int, err error) error { return &ExitErr{Code: code, Err: err} }

// Builder makes one top-level command.
type Builder func(*App) *cobra.Command

var (
	regMu    sync.Mutex
	builders []Builder
)

// Register adds a top-level command; called from init() in each noun's file.
func Register(b Builder) {
	regMu.Lock()
	defer regMu.Unlock()
	builders = append(builders, b)
}

// App is the factory every command gets: I/O streams, configuration, the
// output printer and a lazily opened database pool.
type App struct {
	In     io.Reader
	Out    io.Writer
	Err    io.Writer
	OutTTY bool
	ErrTTY bool
	InTTY  bool

	V          *viper.Viper
	ConfigPath string
	Logger     *slog.Logger

	flagDatabaseURL string
	flagContext     string

	mu     sync.Mutex
	pool   *pgxpool.Pool
	dbURL  string
	dbFrom string
}

// NewApp builds an App over the given streams.
func NewApp(in io.Reader, out, errw io.Writer) *App {
	a := &App{In: in, Out: out, Err: errw, V: viper.New()}
	a.OutTTY = isTerminal(out)
	a.ErrTTY = isTerminal(errw)
	a.InTTY = isTerminal(in)
	return a
}

func isTerminal(x any) bool {
	f, ok := x.(*os.File)
	if !ok {
		return false
	}
	fi, err := f.Stat()
	return err == nil && fi.Mode()&os.ModeCharDevice != 0
}

// Format is the -o value.
func (a *App) Format() string { return a.V.GetString("output") }

// Color reports whether styled output is allowed on stdout.
func (a *App) Color() bool {
	if a.V.GetBool("no-color") || os.Getenv("NO_COLOR") != "" || os.Getenv("TERM") == "dumb" {
		return false
	}
	return a.OutTTY
}

// Printer prints to stdout in the selected format.
func (a *App) Printer() *output.Printer {
	return &output.Printer{Format: a.Format(), Out: a.Out, TTY: a.OutTTY, Color: a.Color()}
}

// Yes reports whether --yes was given.
func (a *App) Yes() bool { return a.V.GetBool("yes") }

// Verbose is the -v count.
func (a *App) Verbose() int { return a.V.GetInt("verbose") }

// Infof writes a message to stderr.
func (a *App) Infof(format string, args ...any) {
	fmt.Fprintf(a.Err, format+"\n", args...)
}

// Actor names who makes a change: --actor, V3CTL_ACTOR, else the OS user.
func (a *App) Actor() string {
	if s := a.V.GetString("actor"); s != "" {
		return s
	}
	if u, err := user.Current(); err == nil && u.Username != "" {
		return u.Username
	}
	return "unknown"
}

// Confirm asks before a destructive action: --yes skips it; without a
// terminal to ask on, the action is refused.
func (a *App) Confirm(what string) error {
	if a.Yes() {
		return nil
	}
	if !a.InTTY || !a.ErrTTY {
		return UsageErrorf("%s: refusing without confirmation; pass --yes", what)
	}
	fmt.Fprintf(a.Err, "%s. Continue? [y/N] ", what)
	var answer string
	_, _ = fmt.Fscanln(a.In, &answer)
	if strings.EqualFold(answer, "y") || strings.EqualFold(answer, "yes") {
		return nil
	}
	return WithCode(ExitError, errors.New("aborted"))
}

// LoadConfig reads the configuration file.
func (a *App) LoadConfig() (*config.File, error) {
	if a.ConfigPath == "" {
		a.ConfigPath = config.DefaultPath()
	}
	return config.Load(a.ConfigPath)
}

// DatabaseURL resolves which database to use, in this order: --database-url,
// --context, V3CTL_DATABASE_URL, DATABASE_URL, V3CTL_CONTEXT, the config
// file's current-context, and finally a running dev database. It returns the
// URL and a description of where it came from.
func (a *App) DatabaseURL(ctx context.Context) (string, string, error) {
	if a.flagDatabaseURL != "" {
		return a.flagDatabaseURL, "--database-url", nil
	}
	cf, err := a.LoadConfig()
	if err != nil {
		return "", "", err
	}
	fromContext := func(name, source string) (string, string, error) {
		c, ok := cf.Contexts[name]
		if !ok {
			return "", "", UsageErrorf("unknown context %q (%s); known: %s", name, source, strings.Join(cf.Names(), ", "))
		}
		if c.DatabaseURL == "" {
			return "", "", UsageErrorf("context %q has no database-url", name)
		}
		return c.DatabaseURL, "context " + name, nil
	}
	if a.flagContext != "" {
		return fromContext(a.flagContext, "--context")
	}
	if u := os.Getenv("V3CTL_DATABASE_URL"); u != "" {
		return u, "V3CTL_DATABASE_URL", nil
	}
	if u := os.Getenv("DATABASE_URL"); u != "" {
		return u, "DATABASE_URL", nil
	}
	if c := os.Getenv("V3CTL_CONTEXT"); c != "" {
		return fromContext(c, "V3CTL_CONTEXT")
	}
	if cf.CurrentContext != "" {
		return fromContext(cf.CurrentContext, "current-context in "+a.ConfigPath)
	}
	st, err := devdb.Status(ctx, devdb.Options{Name: "dev"})
	if err == nil && st.Running {
		return st.URL(), "the dev database", nil
	}
	return "", "", WithCode(ExitUnavailable, errors.New("no database configured: start the private dev database with `v3ctl dev up`, or pass --database-url, set V3CTL_DATABASE_URL / DATABASE_URL, or choose a context (v3ctl config set-context)"))
}

// DB opens (once) and returns the pool for the resolved database.
func (a *App) DB(ctx context.Context) (*pgxpool.Pool, error) { return a.DBConns(ctx, 0) }

// DBConns is DB with a pool of at least conns connections, for commands that
// hold many at once (bench); 0 keeps pgx's default.
func (a *App) DBConns(ctx context.Context, conns int) (*pgxpool.Pool, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.pool != nil {
		return a.pool, nil
	}
	u, err := a.url(ctx)
	if err != nil {
		return nil, err
	}
	pool, err := db.Connect(ctx, u, func(c *pgxpool.Config) {
		if n := int32(conns); c.MaxConns < n {
			c.MaxConns = n
		}
	})
	if err != nil {
		return nil, WithCode(ExitUnavailable, err)
	}
	a.pool = pool
	return pool, nil
}

// URL resolves the database URL (see DatabaseURL) and, when it is the dev
// database, says so on stderr.
func (a *App) URL(ctx context.Context) (string, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.url(ctx)
}

func (a *App) url(ctx context.Context) (string, error) {
	if a.dbURL != "" {
		return a.dbURL, nil
	}
	u, from, err := a.DatabaseURL(ctx)
	if err != nil {
		return "", err
	}
	if from == "the dev database" {
		a.Infof("using the dev database (%s)", db.Redact(u))
	} else if a.Verbose() > 0 {
		a.Infof("using %s from %s", db.Redact(u), from)
	}
	a.dbURL, a.dbFrom = u, from
	return u, nil
}

// Close releases the pool.
func (a *App) Close() {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.pool != nil {
		a.pool.Close()
		a.pool = nil
	}
}

// NewRootCmd builds the whole command tree.
func NewRootCmd(a *App) *cobra.Command {
	root := &cobra.Command{
		Use:   "v3ctl",
		Short: "Operate the V3 processing backend: schema, job queue, workers, vendor limits and usage",
		Long: `v3ctl owns and operates the V3 backend's PostgreSQL schema: job coordination
(queue, workers, reclaim), vendor API rate limits, and usage metering with
subscription plans. It talks to Supabase or any PostgreSQL, or starts a
private PostgreSQL for you (v3ctl dev up).`,
		Example: `  v3ctl dev up && v3ctl migrate up     # private database with the schema
  v3ctl flags set billing_enabled true --reason "launch"
  v3ctl --context prod migrate validate  # exit 3 when migrations are pending`,
		SilenceUsage:  true,
		SilenceErrors: true,
		PersistentPreRunE: func(cmd *cobra.Command, _ []string) error {
			return a.init(cmd)
		},
	}
	pf := root.PersistentFlags()
	pf.StringVar(&a.flagDatabaseURL, "database-url", "", "PostgreSQL URL (env V3CTL_DATABASE_URL, then DATABASE_URL)")
	pf.StringVar(&a.flagContext, "context", "", "named context from the config file (env V3CTL_CONTEXT)")
	pf.StringVar(&a.ConfigPath, "config", "", "config file (default $XDG_CONFIG_HOME/v3ctl/config.yaml; env V3CTL_CONFIG)")
	pf.StringP("output", "o", "table", "output format: "+strings.Join(output.Formats, ", "))
	pf.Bool("no-color", false, "disable colour (also NO_COLOR)")
	pf.BoolP("yes", "y", false, "assume yes: skip confirmations (required without a terminal)")
	pf.CountP("verbose", "v", "more logging (repeat for more)")
	pf.String("actor", "", "who is making changes, for the audit log (env V3CTL_ACTOR; default: the OS user)")
	for _, name := range []string{"output", "no-color", "yes", "verbose", "actor"} {
		_ = a.V.BindPFlag(name, pf.Lookup(name))
	}
	_ = root.RegisterFlagCompletionFunc("output", func(*cobra.Command, []string, string) ([]string, cobra.ShellCompDirective) {
		return output.Formats, cobra.ShellCompDirectiveNoFileComp
	})
	_ = root.RegisterFlagCompletionFunc("context", func(*cobra.Command, []string, string) ([]string, cobra.ShellCompDirective) {
		cf, err := a.LoadConfig()
		if err != nil {
			return nil, cobra.ShellCompDirectiveNoFileComp
		}
		return cf.Names(), cobra.ShellCompDirectiveNoFileComp
	})
	root.SetFlagErrorFunc(func(_ *cobra.Command, err error) error {
		return &ExitErr{Code: ExitUsage, Err: err}
	})

	regMu.Lock()
	bs := append([]Builder(nil), builders...)
	regMu.Unlock()
	for _, b := range bs {
		root.AddCommand(b(a))
	}
	sort.Slice(root.Commands(), func(i, j int) bool { return root.Commands()[i].Name() < root.Commands()[j].Name() })
	root.SetIn(a.In)
	root.SetOut(a.Out)
	root.SetErr(a.Err)
	return root
}

// init runs before every command: config file, environment, logging.
func (a *App) init(cmd *cobra.Command) error {
	if a.ConfigPath == "" {
		a.ConfigPath = config.DefaultPath()
	}
	a.V.SetConfigFile(a.ConfigPath)
	a.V.SetConfigType("yaml")
	a.V.SetEnvPrefix("V3CTL")
	a.V.SetEnvKeyReplacer(strings.NewReplacer("-", "_", ".", "_"))
	a.V.AutomaticEnv()
	if _, err := os.Stat(a.ConfigPath); err == nil {
		if err := a.V.ReadInConfig(); err != nil {
			return fmt.Errorf("read config %s: %w", a.ConfigPath, err)
		}
	}
	if f := a.Format(); !output.ValidFormat(f) {
		return UsageErrorf("invalid output format %q: use one of %s", f, strings.Join(output.Formats, ", "))
	}
	level := slog.LevelWarn
	switch {
	case a.Verbose() >= 2:
		level = slog.LevelDebug
	case a.Verbose() == 1:
		level = slog.LevelInfo
	}
	a.Logger = slog.New(slog.NewTextHandler(a.Err, &slog.HandlerOptions{Level: level}))
	return nil
}

// Execute runs the command line and returns the process exit code.
func Execute(ctx context.Context, a *App, args []string) int {
	root := NewRootCmd(a)
	root.SetArgs(args)
	defer a.Close()
	err := root.ExecuteContext(ctx)
	if err == nil {
		return ExitOK
	}
	code := ExitError
	var ee *ExitErr
	if errors.As(err, &ee) {
		code = ee.Code
		if ee.Err == nil {
			return code
		}
	} else if isCobraUsageError(err) {
		code = ExitUsage
	}
	msg := db.Explain(err).Error()
	if a.dbURL != "" {
		msg = db.ScrubError(errors.New(msg), a.dbURL).Error()
	}
	prefix := "error: "
	if a.ErrTTY && a.V != nil && !a.V.GetBool("no-color") && os.Getenv("NO_COLOR") == "" {
		prefix = output.Styles.Err.Render("error:") + " "
	}
	fmt.Fprintln(a.Err, prefix+msg)
	if code == ExitUsage && !strings.Contains(msg, "--help") {
		fmt.Fprintf(a.Err, "run '%s --help' for usage\n", commandPath(root, args))
	}
	return code
}

func commandPath(root *cobra.Command, args []string) string {
	c, _, err := root.Find(args)
	if err != nil || c == nil {
		return "v3ctl"
	}
	return c.CommandPath()
}

func isCobraUsageError(err error) bool {
	s := err.Error()
	for _, p := range []string{"unknown command", "unknown flag", "unknown shorthand flag", "accepts ", "requires at least", "requires at most", "invalid argument", "flag needs an argument", "required flag"} {
		if strings.Contains(s, p) {
			return true
		}
	}
	return false
}

// Main is the process entry point.
func Main() int {
	a := NewApp(os.Stdin, os.Stdout, os.Stderr)
	ctx, stop := signalContext()
	defer stop()
	return Execute(ctx, a, os.Args[1:])
}
