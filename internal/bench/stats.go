package bench

import (
	"context"
	"regexp"
	"strings"

	"github.com/jackc/pgx/v5/pgxpool"
)

// Statement is one row of pg_stat_statements.
type Statement struct {
	Query   string  `json:"query"`
	Calls   int64   `json:"calls"`
	TotalMS float64 `json:"total_ms"`
	MeanMS  float64 `json:"mean_ms"`
	Rows    int64   `json:"rows"`
}

// ResetStatements creates pg_stat_statements (when the server preloads it)
// and clears its counters. It fails when the extension is not available.
func ResetStatements(ctx context.Context, pool *pgxpool.Pool) error {
	if _, err := pool.Exec(ctx, `CREATE EXTENSION IF NOT EXISTS pg_stat_statements`); err != nil {
		return err
	}
	_, err := pool.Exec(ctx, `SELECT pg_stat_statements_reset()`)
	return err
}

var spaces = regexp.MustCompile(`\s+`)

// TopStatements lists the statements with the most total execution time.
// Query texts are normalised by the server (constants become $n), so they
// carry no payloads.
func TopStatements(ctx context.Context, pool *pgxpool.Pool, limit int) ([]Statement, error) {
	rows, err := pool.Query(ctx, `SELECT query, calls, total_exec_time, mean_exec_time, rows
FROM pg_stat_statements WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database())
ORDER BY total_exec_time DESC LIMIT $1`, limit)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []Statement
	for rows.Next() {
		var s Statement
		if err := rows.Scan(&s.Query, &s.Calls, &s.TotalMS, &s.MeanMS, &s.Rows); err != nil {
			return nil, err
		}
		q := strings.TrimSpace(spaces.ReplaceAllString(s.Query, " "))
		if len(q) > 90 {
			q = q[:87] + "..."
		}
		s.Query = q
		s.TotalMS = float64(int64(s.TotalMS*10)) / 10
		s.MeanMS = float64(int64(s.MeanMS*1000)) / 1000
		out = append(out, s)
	}
	return out, rows.Err()
}
