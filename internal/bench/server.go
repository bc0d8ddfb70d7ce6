package bench

import (
	"context"
	"fmt"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"

	"github.com/jackc/pgx/v5"

	"github.com/v3ctl/v3ctl/internal/devdb"
	"github.com/v3ctl/v3ctl/internal/migrate"
)

// ServerOptions describe a private PostgreSQL for benchmarks and fault runs.
type ServerOptions struct {
	// Name of the devdb instance (default "bench"); Dir overrides its directory.
	Name string
	Dir  string
	// Fast turns durability off (fsync, synchronous_commit). Benchmarks
	// default to false: every commit waits for its WAL flush, as in production.
	Fast bool
	// StatStatements loads pg_stat_statements when the contrib library is
	// installed (see HasStatStatements).
	StatStatements bool
	// StatNested also tracks statements run inside functions
	// (pg_stat_statements.track = all). It costs v3ctl's PL/pgSQL API more
	// than River's plain SQL, so the default (top) keeps the comparison fair.
	StatNested bool
}

// HasStatStatements reports whether pg_stat_statements.so is installed next
// to the server binaries in bindir.
func HasStatStatements(bindir string) bool {
	out, err := exec.Command(filepath.Join(bindir, "pg_config"), "--pkglibdir").Output()
	if err != nil {
		out, err = exec.Command("pg_config", "--pkglibdir").Output()
		if err != nil {
			return false
		}
	}
	_, err = os.Stat(filepath.Join(strings.TrimSpace(string(out)), "pg_stat_statements.so"))
	return err == nil
}

// StartServer (re)starts the named private instance with the requested
// settings: a running instance is stopped first so that Fast and the
// preload list are what the caller asked for. stop shuts it down.
func StartServer(ctx context.Context, o ServerOptions) (st *devdb.State, stop func(), err error) {
	if o.Name == "" {
		o.Name = "bench"
	}
	dopts := devdb.Options{Name: o.Name, Dir: o.Dir, Fast: o.Fast, Settings: map[string]string{
		"max_connections": "400",
		// Autovacuum as shipped; the queue tables see heavy churn and the
		// benchmark should show what a default server does with it.
	}}
	if o.StatStatements {
		bindir, berr := devdb.FindBinDir()
		if berr == nil && HasStatStatements(bindir) {
			dopts.Settings["shared_preload_libraries"] = "'pg_stat_statements'"
			dopts.Settings["pg_stat_statements.track"] = "top"
			if o.StatNested {
				dopts.Settings["pg_stat_statements.track"] = "all"
			}
		}
	}
	if _, _, err := devdb.Down(ctx, dopts); err != nil {
		return nil, nil, err
	}
	st, _, err = devdb.Up(ctx, dopts)
	if err != nil {
		return nil, nil, err
	}
	return st, func() { _, _, _ = devdb.Down(context.Background(), dopts) }, nil
}

// FreshDatabase drops and recreates database name on the server reached by
// adminURL, applies every v3ctl migration and returns its URL.
func FreshDatabase(ctx context.Context, adminURL, name string) (string, error) {
	conn, err := pgx.Connect(ctx, adminURL)
	if err != nil {
		return "", err
	}
	defer conn.Close(ctx)
	id := pgx.Identifier{name}.Sanitize()
	if _, err := conn.Exec(ctx, `DROP DATABASE IF EXISTS `+id+` WITH (FORCE)`); err != nil {
		return "", err
	}
	if _, err := conn.Exec(ctx, `CREATE DATABASE `+id); err != nil {
		return "", err
	}
	u := WithDatabase(adminURL, name)
	if err := Migrate(ctx, u); err != nil {
		return "", err
	}
	return u, nil
}

// Migrate applies every v3ctl migration to the database at u.
func Migrate(ctx context.Context, u string) error {
	m, err := migrate.Open(ctx, u, nil)
	if err != nil {
		return fmt.Errorf("open migrator: %w", err)
	}
	defer m.Close()
	if _, err := m.Up(ctx, 0); err != nil {
		return fmt.Errorf("migrate: %w", err)
	}
	return nil
}

// WithDatabase returns the URL u with its database name replaced.
func WithDatabase(u, name string) string {
	p, err := url.Parse(u)
	if err != nil {
		return u
	}
	p.Path = "/" + name
	return p.String()
}
