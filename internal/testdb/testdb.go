// Package testdb gives each test its own real PostgreSQL database, cloned
// from a template that has the whole schema applied.
//
// The server is V3CTL_TEST_DATABASE_URL when set (any database on the target
// server; the role must be allowed to create databases), otherwise a private
// throwaway cluster started through the same mechanism as `v3ctl dev up`
// (instance "test", durability off). The template is named after a hash of
// the embedded migrations, built once under an advisory lock, and reused by
// every test binary until the migrations change.
package testdb

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io/fs"
	"net/url"
	"os"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/v3ctl/v3ctl/internal/devdb"
	"github.com/v3ctl/v3ctl/internal/migrate"
	"github.com/v3ctl/v3ctl/migrations"
)

var (
	serverOnce sync.Once
	serverURL  string
	serverErr  error

	tplMu   sync.Mutex
	tplName string
)

// ServerURL is a URL of an administrative database on the test server.
func ServerURL(tb testing.TB) string {
	tb.Helper()
	serverOnce.Do(func() {
		if u := os.Getenv("V3CTL_TEST_DATABASE_URL"); u != "" {
			serverURL = u
			return
		}
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
		defer cancel()
		st, _, err := devdb.Up(ctx, devdb.Options{Name: "test", Fast: true})
		if err != nil {
			serverErr = fmt.Errorf("start the throwaway test PostgreSQL: %w", err)
			return
		}
		serverURL = st.URLFor("postgres")
	})
	if serverErr != nil {
		tb.Fatal(serverErr)
	}
	return serverURL
}

// WithDatabase returns u with its database name replaced.
func WithDatabase(u, name string) string {
	p, err := url.Parse(u)
	if err != nil {
		panic(err)
	}
	p.Path = "/" + name
	return p.String()
}

// migrationsHash identifies the schema: any change to a migration file gives
// a new template.
func migrationsHash() string {
	h := sha256.New()
	files, _ := fs.Glob(migrations.FS, "*.sql")
	sort.Strings(files)
	for _, f := range files {
		b, _ := fs.ReadFile(migrations.FS, f)
		h.Write([]byte(f))
		h.Write(b)
	}
	return hex.EncodeToString(h.Sum(nil))[:16]
}

// Template returns the name of the migrated template database, building it
// if needed.
func Template(tb testing.TB) string {
	tb.Helper()
	tplMu.Lock()
	defer tplMu.Unlock()
	if tplName != "" {
		return tplName
	}
	admin := ServerURL(tb)
	name := "v3ctl_tpl_" + migrationsHash()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	conn, err := pgx.Connect(ctx, admin)
	if err != nil {
		tb.Fatalf("connect to the test server: %v", err)
	}
	defer conn.Close(ctx)
	// Serialise template builds across test binaries.
	if _, err := conn.Exec(ctx, `SELECT pg_advisory_lock(7306010001)`); err != nil {
		tb.Fatal(err)
	}
	defer conn.Exec(context.Background(), `SELECT pg_advisory_unlock(7306010001)`)
	var exists bool
	if err := conn.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)`, name).Scan(&exists); err != nil {
		tb.Fatal(err)
	}
	if !exists {
		building := name + "_building"
		_, _ = conn.Exec(ctx, `DROP DATABASE IF EXISTS `+pgx.Identifier{building}.Sanitize()+` WITH (FORCE)`)
		if _, err := conn.Exec(ctx, `CREATE DATABASE `+pgx.Identifier{building}.Sanitize()); err != nil {
			tb.Fatal(err)
		}
		m, err := migrate.Open(ctx, WithDatabase(admin, building), nil)
		if err != nil {
			tb.Fatalf("open migrator: %v", err)
		}
		if _, err := m.Up(ctx, 0); err != nil {
			m.Close()
			tb.Fatalf("migrate the template: %v", err)
		}
		m.Close()
		if _, err := conn.Exec(ctx, `ALTER DATABASE `+pgx.Identifier{building}.Sanitize()+` RENAME TO `+pgx.Identifier{name}.Sanitize()); err != nil {
			tb.Fatal(err)
		}
	}
	tplName = name
	return name
}

// NewURL creates a fresh database cloned from the migrated template and
// returns its URL; the database is dropped when the test ends.
func NewURL(tb testing.TB) string {
	tb.Helper()
	return newDatabase(tb, Template(tb))
}

// NewEmptyURL creates a fresh empty database (no schema) and returns its URL.
func NewEmptyURL(tb testing.TB) string {
	tb.Helper()
	return newDatabase(tb, "template0")
}

func newDatabase(tb testing.TB, template string) string {
	tb.Helper()
	admin := ServerURL(tb)
	var rb [6]byte
	_, _ = rand.Read(rb[:])
	name := "v3ctl_t_" + strings.ToLower(sanitize(tb.Name())) + "_" + hex.EncodeToString(rb[:])
	if len(name) > 63 {
		name = "v3ctl_t_" + hex.EncodeToString(rb[:])
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	conn, err := pgx.Connect(ctx, admin)
	if err != nil {
		tb.Fatalf("connect to the test server: %v", err)
	}
	defer conn.Close(ctx)
	var lastErr error
	for i := 0; i < 20; i++ {
		_, lastErr = conn.Exec(ctx, `CREATE DATABASE `+pgx.Identifier{name}.Sanitize()+` TEMPLATE `+pgx.Identifier{template}.Sanitize())
		if lastErr == nil || !strings.Contains(lastErr.Error(), "is being accessed by other users") {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if lastErr != nil {
		tb.Fatalf("create test database: %v", lastErr)
	}
	tb.Cleanup(func() {
		if os.Getenv("V3CTL_TEST_KEEP_DB") != "" {
			tb.Logf("kept test database %s", name)
			return
		}
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		c, err := pgx.Connect(ctx, admin)
		if err != nil {
			return
		}
		defer c.Close(ctx)
		_, _ = c.Exec(ctx, `DROP DATABASE IF EXISTS `+pgx.Identifier{name}.Sanitize()+` WITH (FORCE)`)
	})
	return WithDatabase(admin, name)
}

func sanitize(s string) string {
	var b strings.Builder
	for _, r := range s {
		switch {
		case r >= 'a' && r <= 'z', r >= 'A' && r <= 'Z', r >= '0' && r <= '9':
			b.WriteRune(r)
		default:
			b.WriteByte('_')
		}
	}
	out := b.String()
	if len(out) > 30 {
		out = out[:30]
	}
	return out
}

// New creates a fresh migrated database and returns a pool on it, closed
// when the test ends.
func New(tb testing.TB) *pgxpool.Pool {
	tb.Helper()
	return Pool(tb, NewURL(tb))
}

// Pool opens a pool on u, closed when the test ends.
func Pool(tb testing.TB, u string) *pgxpool.Pool {
	tb.Helper()
	cfg, err := pgxpool.ParseConfig(u)
	if err != nil {
		tb.Fatal(err)
	}
	cfg.MaxConns = 20
	pool, err := pgxpool.NewWithConfig(context.Background(), cfg)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(pool.Close)
	return pool
}
