// Package db holds the database handle interface every domain package takes,
// connection helpers, URL redaction and the translation of PostgreSQL errors
// into sentences.
package db

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"regexp"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
)

// DB is the small interface domain packages take: a *pgxpool.Pool, a
// *pgxpool.Conn or a pgx.Tx all satisfy it.
type DB interface {
	Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error)
	Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
}

// TxBeginner is a DB that can also open a transaction.
type TxBeginner interface {
	DB
	Begin(ctx context.Context) (pgx.Tx, error)
}

// Connect opens a pool and checks it with a ping. The application_name
// defaults to "v3ctl" so the connections are recognisable in pg_stat_activity.
func Connect(ctx context.Context, dsn string, opts ...func(*pgxpool.Config)) (*pgxpool.Pool, error) {
	cfg, err := pgxpool.ParseConfig(dsn)
	if err != nil {
		return nil, fmt.Errorf("invalid database URL %s: %w", Redact(dsn), scrub(err, dsn))
	}
	if _, ok := cfg.ConnConfig.RuntimeParams["application_name"]; !ok {
		cfg.ConnConfig.RuntimeParams["application_name"] = "v3ctl"
	}
	if cfg.ConnConfig.ConnectTimeout == 0 {
		cfg.ConnConfig.ConnectTimeout = 10 * time.Second
	}
	for _, o := range opts {
		o(cfg)
	}
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("connect to %s: %w", Redact(dsn), scrub(err, dsn))
	}
	if err := pool.Ping(ctx); err != nil {
		pool.Close()
		return nil, fmt.Errorf("connect to %s: %w", Redact(dsn), scrub(err, dsn))
	}
	return pool, nil
}

var kvPassword = regexp.MustCompile(`(?i)(password\s*=\s*)('[^']*'|\S+)`)

// Redact hides the password of a postgres URL or keyword/value DSN.
func Redact(dsn string) string {
	if strings.HasPrefix(dsn, "postgres://") || strings.HasPrefix(dsn, "postgresql://") {
		u, err := url.Parse(dsn)
		if err != nil {
			return "postgres://(unparsable URL)"
		}
		if u.User != nil {
			if _, has := u.User.Password(); has {
				u.User = url.UserPassword(u.User.Username(), "xxxxx")
			}
		}
		q := u.Query()
		if q.Has("password") {
			q.Set("password", "xxxxx")
			u.RawQuery = q.Encode()
		}
		return u.String()
	}
	return kvPassword.ReplaceAllString(dsn, "${1}xxxxx")
}

// Password returns the password embedded in a DSN, if any.
func Password(dsn string) string {
	if u, err := url.Parse(dsn); err == nil && u.User != nil {
		if p, ok := u.User.Password(); ok {
			return p
		}
		if p := u.Query().Get("password"); p != "" {
			return p
		}
	}
	if m := kvPassword.FindStringSubmatch(dsn); m != nil {
		return strings.Trim(m[2], "'")
	}
	return ""
}

// scrub removes any occurrence of the DSN's password from an error text.
func scrub(err error, dsn string) error {
	if err == nil {
		return nil
	}
	p := Password(dsn)
	if p == "" || !strings.Contains(err.Error(), p) {
		return err
	}
	return errors.New(strings.ReplaceAll(err.Error(), p, "xxxxx"))
}

// ScrubError removes the DSN's password from err's text, if present.
func ScrubError(err error, dsn string) error { return scrub(err, dsn) }

// Explain turns a PostgreSQL error into a sentence: the server's message,
// then its detail and hint. Other errors pass through.
func Explain(err error) error {
	var pg *pgconn.PgError
	if !errors.As(err, &pg) {
		return err
	}
	var b strings.Builder
	b.WriteString(pg.Message)
	if pg.Detail != "" {
		b.WriteString(" (" + pg.Detail + ")")
	}
	if pg.Hint != "" {
		b.WriteString("; " + pg.Hint)
	}
	switch pg.Code {
	case "42501":
		b.WriteString(" [permission denied: connect as a role with service-level access]")
	case "42883", "42P01":
		b.WriteString(" [is the schema applied? run: v3ctl migrate up]")
	}
	return &SQLError{Code: pg.Code, Msg: b.String(), Err: err}
}

// SQLError is a PostgreSQL error rewritten as a sentence; Code is the SQLSTATE.
type SQLError struct {
	Code string
	Msg  string
	Err  error
}

func (e *SQLError) Error() string { return e.Msg }
func (e *SQLError) Unwrap() error { return e.Err }

// IsInvalidInput reports whether err is a validation error raised by one of
// the schema's functions (SQLSTATE 22023 invalid_parameter_value, 22P02, 23514).
func IsInvalidInput(err error) bool {
	var pg *pgconn.PgError
	if errors.As(err, &pg) {
		switch pg.Code {
		case "22023", "22P02", "23514", "22004":
			return true
		}
	}
	return false
}

// InTx runs fn in a transaction, committing when it returns nil and rolling
// back otherwise (also when fn panics).
func InTx(ctx context.Context, conn TxBeginner, fn func(tx pgx.Tx) error) (err error) {
	tx, err := conn.Begin(ctx)
	if err != nil {
		return err
	}
	defer func() {
		if p := recover(); p != nil {
			_ = tx.Rollback(ctx)
			panic(p)
		}
		if err != nil {
			_ = tx.Rollback(ctx)
		}
	}()
	if err = fn(tx); err != nil {
		return err
	}
	return tx.Commit(ctx)
}
