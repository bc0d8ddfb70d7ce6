// Package migrate applies the embedded V3 schema with goose. Runs are
// serialised with a session-level advisory lock, so two concurrent "up"s are
// safe: one applies, the other waits and then finds nothing to do.
package migrate

import (
	"bufio"
	"context"
	"database/sql"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"sort"
	"strings"
	"time"

	"github.com/jackc/pgx/v5/stdlib"
	"github.com/pressly/goose/v3"
	"github.com/pressly/goose/v3/lock"

	"github.com/v3ctl/v3ctl/migrations"
)

// VersionTable is where applied versions are recorded. It lives in its own
// schema so that Supabase's default grants on public never expose it.
const VersionTable = "v3ctl.schema_migrations"

// Migrator wraps a goose provider over the embedded migrations.
type Migrator struct {
	db       *sql.DB
	provider *goose.Provider
	fsys     fs.FS
}

// Open connects to dsn and prepares a migrator. Close it when done.
func Open(ctx context.Context, dsn string, logger *slog.Logger) (*Migrator, error) {
	return OpenFS(ctx, dsn, migrations.FS, logger)
}

// OpenFS is Open over another set of migrations (tests).
func OpenFS(ctx context.Context, dsn string, fsys fs.FS, logger *slog.Logger) (*Migrator, error) {
	db, err := sql.Open("pgx", dsn)
	if err != nil {
		return nil, err
	}
	db.SetMaxOpenConns(2)
	if err := db.PingContext(ctx); err != nil {
		db.Close()
		return nil, err
	}
	if _, err := db.ExecContext(ctx, `CREATE SCHEMA IF NOT EXISTS v3ctl`); err != nil {
		db.Close()
		return nil, fmt.Errorf("create schema v3ctl: %w", err)
	}
	locker, err := lock.NewPostgresSessionLocker(
		lock.WithLockTimeout(1, 1800), // retry every second for up to 30 minutes
		lock.WithUnlockTimeout(1, 60),
	)
	if err != nil {
		db.Close()
		return nil, err
	}
	opts := []goose.ProviderOption{
		goose.WithSessionLocker(locker),
		goose.WithTableName(VersionTable),
		goose.WithDisableGlobalRegistry(true),
	}
	if logger != nil {
		opts = append(opts, goose.WithSlog(logger))
	}
	p, err := goose.NewProvider(goose.DialectPostgres, db, fsys, opts...)
	if err != nil {
		db.Close()
		return nil, err
	}
	return &Migrator{db: db, provider: p, fsys: fsys}, nil
}

// Close releases the connection.
func (m *Migrator) Close() error { return m.provider.Close() }

// Result is one migration applied or rolled back.
type Result struct {
	Version   int64   `json:"version" yaml:"version"`
	Name      string  `json:"name" yaml:"name"`
	Direction string  `json:"direction" yaml:"direction"`
	Seconds   float64 `json:"seconds" yaml:"seconds"`
}

// Status is the state of one migration.
type Status struct {
	Version   int64      `json:"version" yaml:"version"`
	Name      string     `json:"name" yaml:"name"`
	Applied   bool       `json:"applied" yaml:"applied"`
	AppliedAt *time.Time `json:"applied_at,omitempty" yaml:"applied_at,omitempty"`
}

func convert(rs []*goose.MigrationResult) []Result {
	out := make([]Result, 0, len(rs))
	for _, r := range rs {
		out = append(out, Result{Version: r.Source.Version, Name: baseName(r.Source.Path),
			Direction: r.Direction, Seconds: r.Duration.Seconds()})
	}
	return out
}

func baseName(p string) string {
	if i := strings.LastIndex(p, "/"); i >= 0 {
		return p[i+1:]
	}
	return p
}

// Up applies pending migrations up to version (0 = all).
func (m *Migrator) Up(ctx context.Context, to int64) ([]Result, error) {
	var rs []*goose.MigrationResult
	var err error
	if to > 0 {
		if err := m.checkVersion(to); err != nil {
			return nil, err
		}
		rs, err = m.provider.UpTo(ctx, to)
	} else {
		rs, err = m.provider.Up(ctx)
	}
	return convert(rs), unwrapPartial(err)
}

// Down rolls back one migration, or down to version when to >= 0.
func (m *Migrator) Down(ctx context.Context, to int64, all bool) ([]Result, error) {
	if all || to >= 0 {
		if to < 0 {
			to = 0
		}
		if to > 0 {
			if err := m.checkVersion(to); err != nil {
				return nil, err
			}
		}
		rs, err := m.provider.DownTo(ctx, to)
		return convert(rs), unwrapPartial(err)
	}
	r, err := m.provider.Down(ctx)
	if errors.Is(err, goose.ErrNoNextVersion) {
		return nil, nil
	}
	if err != nil {
		return nil, unwrapPartial(err)
	}
	return convert([]*goose.MigrationResult{r}), nil
}

// Redo rolls back the newest applied migration and applies it again.
func (m *Migrator) Redo(ctx context.Context) ([]Result, error) {
	cur, err := m.provider.GetDBVersion(ctx)
	if err != nil {
		return nil, err
	}
	if cur == 0 {
		return nil, errors.New("nothing to redo: no migration is applied")
	}
	down, err := m.provider.ApplyVersion(ctx, cur, false)
	if err != nil {
		return nil, unwrapPartial(err)
	}
	up, err := m.provider.ApplyVersion(ctx, cur, true)
	if err != nil {
		return convert([]*goose.MigrationResult{down}), unwrapPartial(err)
	}
	return convert([]*goose.MigrationResult{down, up}), nil
}

// Version is the database's current version and the binary's newest.
func (m *Migrator) Version(ctx context.Context) (current, latest int64, err error) {
	current, err = m.provider.GetDBVersion(ctx)
	if err != nil {
		return 0, 0, err
	}
	return current, m.Latest(), nil
}

// Latest is the newest version embedded in the binary.
func (m *Migrator) Latest() int64 {
	var v int64
	for _, s := range m.provider.ListSources() {
		if s.Version > v {
			v = s.Version
		}
	}
	return v
}

// Status lists every known migration and whether it is applied.
func (m *Migrator) Status(ctx context.Context) ([]Status, error) {
	st, err := m.provider.Status(ctx)
	if err != nil {
		return nil, err
	}
	out := make([]Status, 0, len(st))
	for _, s := range st {
		row := Status{Version: s.Source.Version, Name: baseName(s.Source.Path), Applied: s.State == goose.StateApplied}
		if row.Applied && !s.AppliedAt.IsZero() {
			t := s.AppliedAt.UTC()
			row.AppliedAt = &t
		}
		out = append(out, row)
	}
	return out, nil
}

// Unknown lists versions recorded in the database that this binary does not
// know (the database is ahead of the binary).
func (m *Migrator) Unknown(ctx context.Context) ([]int64, error) {
	known := map[int64]bool{}
	for _, s := range m.provider.ListSources() {
		known[s.Version] = true
	}
	rows, err := m.db.QueryContext(ctx, `SELECT DISTINCT version_id FROM `+VersionTable+` WHERE version_id > 0 AND is_applied ORDER BY 1`)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []int64
	for rows.Next() {
		var v int64
		if err := rows.Scan(&v); err != nil {
			return nil, err
		}
		if !known[v] {
			out = append(out, v)
		}
	}
	return out, rows.Err()
}

// Pending lists migrations not yet applied.
func (m *Migrator) Pending(ctx context.Context) ([]Status, error) {
	st, err := m.Status(ctx)
	if err != nil {
		return nil, err
	}
	var out []Status
	for _, s := range st {
		if !s.Applied {
			out = append(out, s)
		}
	}
	return out, nil
}

func (m *Migrator) checkVersion(v int64) error {
	var versions []string
	for _, s := range m.provider.ListSources() {
		if s.Version == v {
			return nil
		}
		versions = append(versions, fmt.Sprint(s.Version))
	}
	return fmt.Errorf("unknown migration version %d (known: %s)", v, strings.Join(versions, ", "))
}

func unwrapPartial(err error) error {
	var pe *goose.PartialError
	if errors.As(err, &pe) && pe.Failed != nil {
		return fmt.Errorf("migration %s failed (applied before it: %d): %w",
			baseName(pe.Failed.Source.Path), len(pe.Applied), pe.Err)
	}
	return err
}

// SQLFor returns the SQL of the named direction ("up" or "down") of each
// migration in versions, in the order given, for --dry-run.
func SQLFor(fsys fs.FS, versions []int64, direction string) (string, error) {
	files, err := fs.Glob(fsys, "*.sql")
	if err != nil {
		return "", err
	}
	sort.Strings(files)
	byVersion := map[int64]string{}
	for _, f := range files {
		var v int64
		if _, err := fmt.Sscanf(f, "%d_", &v); err == nil {
			byVersion[v] = f
		}
	}
	var b strings.Builder
	for _, v := range versions {
		f, ok := byVersion[v]
		if !ok {
			return "", fmt.Errorf("no migration file for version %d", v)
		}
		body, err := fs.ReadFile(fsys, f)
		if err != nil {
			return "", err
		}
		fmt.Fprintf(&b, "-- %s (%s)\n%s\n", f, direction, section(string(body), direction))
	}
	return b.String(), nil
}

// section extracts the Up or Down part of a goose SQL file.
func section(body, direction string) string {
	var b strings.Builder
	in := false
	sc := bufio.NewScanner(strings.NewReader(body))
	sc.Buffer(make([]byte, 1024*1024), 1024*1024)
	for sc.Scan() {
		line := sc.Text()
		t := strings.TrimSpace(line)
		switch {
		case strings.HasPrefix(t, "-- +goose Up"):
			in = direction == "up"
			continue
		case strings.HasPrefix(t, "-- +goose Down"):
			in = direction == "down"
			continue
		case strings.HasPrefix(t, "-- +goose "):
			continue
		}
		if in {
			b.WriteString(line + "\n")
		}
	}
	return strings.TrimSpace(b.String()) + "\n"
}

// FS is the embedded migrations.
func FS() fs.FS { return migrations.FS }

var _ = stdlib.GetDefaultDriver
