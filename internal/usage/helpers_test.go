package usage_test

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/v3ctl/v3ctl/internal/db"
)

var ctx = context.Background()

// newAccount creates an auth user and its 'self' profile.
func newAccount(t testing.TB, pool *pgxpool.Pool, email string) (account, self string) {
	t.Helper()
	if err := pool.QueryRow(ctx, `INSERT INTO auth.users (email) VALUES ($1) RETURNING id::text`, email).Scan(&account); err != nil {
		t.Fatal(err)
	}
	self = addProfile(t, pool, account, "self")
	return account, self
}

func addProfile(t testing.TB, pool *pgxpool.Pool, account, typ string) string {
	t.Helper()
	var id string
	if err := pool.QueryRow(ctx, `INSERT INTO public.user_profiles (account_owner_id, profile_type, display_name)
		VALUES ($1::uuid, $2, 'Test person') RETURNING id::text`, account, typ).Scan(&id); err != nil {
		t.Fatal(err)
	}
	return id
}

// newFiles inserts n shell files of the profile, of size bytes each, and
// returns their ids.
func newFiles(t testing.TB, pool *pgxpool.Pool, profile string, n int, size int64) []string {
	t.Helper()
	rows, err := pool.Query(ctx, `INSERT INTO public.shell_files (patient_id, filename, mime_type, file_size_bytes, storage_path)
		SELECT $1::uuid, 'doc.pdf', 'application/pdf', $3, 'x/' || i FROM generate_series(1, $2) i RETURNING id::text`, profile, n, size)
	if err != nil {
		t.Fatal(err)
	}
	ids, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		t.Fatal(err)
	}
	return ids
}

func newFile(t testing.TB, pool *pgxpool.Pool, profile string, size int64) string {
	t.Helper()
	return newFiles(t, pool, profile, 1, size)[0]
}

func setFlag(t testing.TB, pool *pgxpool.Pool, key string, v bool) {
	t.Helper()
	if _, err := pool.Exec(ctx, `SELECT public.set_system_config($1, to_jsonb($2::boolean), 'test', NULL)`, key, v); err != nil {
		t.Fatal(err)
	}
}

func setPlan(t testing.TB, pool *pgxpool.Pool, account, plan string) {
	t.Helper()
	if _, err := pool.Exec(ctx, `SELECT public.set_account_plan($1::uuid, $2, 'test', NULL)`, account, plan); err != nil {
		t.Fatal(err)
	}
}

func count(t testing.TB, q db.DB, sql string, args ...any) int64 {
	t.Helper()
	var n int64
	if err := q.QueryRow(ctx, sql, args...).Scan(&n); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
	return n
}

// asRole runs fn in a transaction as a Supabase role; sub is the JWT
// subject ("" for none). The transaction is rolled back.
func asRole(t testing.TB, pool *pgxpool.Pool, role, sub string, fn func(tx pgx.Tx) error) error {
	t.Helper()
	tx, err := pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback(ctx)
	if _, err := tx.Exec(ctx, `SELECT set_config('role', $1, true)`, role); err != nil {
		t.Fatal(err)
	}
	claims := fmt.Sprintf(`{"role":%q}`, role)
	if sub != "" {
		claims = fmt.Sprintf(`{"sub":%q,"role":%q}`, sub, role)
	}
	if _, err := tx.Exec(ctx, `SELECT set_config('request.jwt.claims', $1, true)`, claims); err != nil {
		t.Fatal(err)
	}
	return fn(tx)
}

func sqlState(err error) string {
	var pg *pgconn.PgError
	if errors.As(err, &pg) {
		return pg.Code
	}
	return ""
}

// newUUID returns a random version 4 UUID.
func newUUID() string {
	var b [16]byte
	_, _ = rand.Read(b[:])
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	return fmt.Sprintf("%x-%x-%x-%x-%x", b[0:4], b[4:6], b[6:8], b[8:10], b[10:16])
}
