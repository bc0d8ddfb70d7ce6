package queue_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/v3ctl/v3ctl/internal/testdb"
)

// FuzzEnqueueJobV3 drives enqueue_job_v3 with arbitrary inputs, as the real
// roles. Property: as the service role a call either succeeds and adds
// exactly the job it returns (or, with an idempotency key, returns the job
// already there), or fails with a clean validation error (22023/22P02) and
// writes nothing — no job, no audit row; as authenticated it is always
// refused (42501) and writes nothing.
// Run: go test ./internal/queue -run '^$' -fuzz FuzzEnqueueJobV3 -fuzztime 30s
func FuzzEnqueueJobV3(f *testing.F) {
	pool := testdb.New(f)
	ctx := context.Background()
	types := []string{"ai_processing", "shell_file_processing", "audit_cleanup", "report_generation", "", "AI_PROCESSING", "nope"}
	lanes := []string{"", "ai_queue_simple", "ai_queue_complex", "fast_queue", "standard_queue", " ", "nope"}
	categories := []string{"standard", "critical", "high_priority", "background", "maintenance", "", "urgent"}
	f.Add(0, 1, `{"shell_file_id":"a"}`, "fixture", 0, 5, 3, "", int64(0))
	f.Add(1, 3, `{"x":1}`, "job", 1, 1, 0, "key-1", int64(60))
	f.Add(1, 3, `{"x":1}`, "job", 1, 1, 0, "key-1", int64(60))
	f.Add(2, 0, `{"a":[1,2,{"b":null}]}`, "cleanup", 4, 10, 100, "", int64(-60))
	f.Add(2, 1, `{"a":1}`, "lane for a lane-less type", 0, 5, 3, "", int64(0))
	f.Add(0, 6, `{"a":1}`, "bad lane", 0, 5, 3, "", int64(0))
	f.Add(4, 0, `{"a":1}`, "no type", 0, 5, 3, "", int64(0))
	f.Add(0, 0, `{}`, "empty payload", 0, 5, 3, "", int64(0))
	f.Add(0, 0, `[]`, "array payload", 0, 5, 3, "", int64(0))
	f.Add(0, 0, `null`, "null payload", 0, 5, 3, "", int64(0))
	f.Add(0, 0, `{"a":"\u0000"}`, "nul", 0, 5, 3, "", int64(0))
	f.Add(0, 0, `{"job_lane":"fast_queue"}`, "lane in payload", 0, 5, 3, "", int64(0))
	f.Add(0, 0, `{"a":1}`, "", 0, 5, 3, "", int64(0))
	f.Add(0, 0, `{"a":1}`, "prio", 0, 0, 3, "", int64(0))
	f.Add(0, 0, `{"a":1}`, "prio", 0, 11, 3, "", int64(0))
	f.Add(0, 0, `{"a":1}`, "retries", 0, 5, -1, "", int64(0))
	f.Add(0, 0, `{"a":1}`, "retries", 0, 5, 1000000, "", int64(0))
	f.Add(0, 0, `{"a":1}`, "category", 6, 5, 3, "", int64(0))
	f.Add(0, 0, `{"a":1}`, "far future", 0, 5, 3, "", int64(1)<<40)

	counts := func(t *testing.T) (jobs, audits int64) {
		if err := pool.QueryRow(ctx, `SELECT (SELECT count(*) FROM public.job_queue), (SELECT count(*) FROM public.audit_log)`).Scan(&jobs, &audits); err != nil {
			t.Fatal(err)
		}
		return
	}
	type res struct {
		id  string
		err error
	}
	call := func(role string, typ, lane, payload, name, category string, prio, retries int, key string, delay int64) res {
		tx, err := pool.Begin(ctx)
		if err != nil {
			return res{err: err}
		}
		defer tx.Rollback(ctx)
		if _, err := tx.Exec(ctx, `SELECT set_config('request.jwt.claims', $1, true)`, `{"role":"`+role+`"}`); err != nil {
			return res{err: err}
		}
		if _, err := tx.Exec(ctx, `SET LOCAL ROLE `+pgx.Identifier{role}.Sanitize()); err != nil {
			return res{err: err}
		}
		var id string
		err = tx.QueryRow(ctx, `SELECT e.job_id::text FROM public.enqueue_job_v3($1, $2, $3::jsonb, $4, $5, pg_catalog.now() + make_interval(secs => $6::float8),
			p_job_lane => $7, p_idempotency_key => $8, p_max_retries => $9) e`,
			typ, name, payload, category, prio, float64(delay), lane, key, retries).Scan(&id)
		if err != nil {
			return res{err: err}
		}
		return res{id: id, err: tx.Commit(ctx)}
	}

	f.Fuzz(func(t *testing.T, typeN, laneN int, payload, name string, catN, prio, retries int, key string, delay int64) {
		pick := func(list []string, n int) string {
			if n < 0 {
				n = -n
			}
			if n < 0 { // math.MinInt
				n = 0
			}
			return list[n%len(list)]
		}
		typ, lane, category := pick(types, typeN), pick(lanes, laneN), pick(categories, catN)
		if delay > int64(200*365*24*time.Hour/time.Second) || delay < -int64(200*365*24*time.Hour/time.Second) {
			delay %= int64(200 * 365 * 24 * 3600)
		}
		// Inputs PostgreSQL itself refuses as jsonb/text never reach the function.
		var norm string
		if err := pool.QueryRow(ctx, `SELECT $1::jsonb::text || $2 || $3`, payload, name, key).Scan(&norm); err != nil {
			var pg *pgconn.PgError
			if !errors.As(err, &pg) || pg.Code[:2] != "22" {
				t.Fatalf("payload/name/key as jsonb/text: want a data exception, got %v", err)
			}
			return
		}
		jobs, audits := counts(t)

		r := call("authenticated", typ, lane, payload, name, category, prio, retries, key, delay)
		var pg *pgconn.PgError
		if r.err == nil || !errors.As(r.err, &pg) || pg.Code != "42501" {
			t.Fatalf("authenticated enqueue: want 42501, got id=%q err=%v", r.id, r.err)
		}
		if j, a := counts(t); j != jobs || a != audits {
			t.Fatalf("refused authenticated enqueue wrote %d jobs, %d audit rows", j-jobs, a-audits)
		}

		r = call("service_role", typ, lane, payload, name, category, prio, retries, key, delay)
		j, a := counts(t)
		if r.err != nil {
			if !errors.As(r.err, &pg) || (pg.Code != "22023" && pg.Code != "22P02") {
				t.Fatalf("enqueue(type=%q lane=%q category=%q prio=%d retries=%d delay=%d): want success or 22023/22P02, got %v",
					typ, lane, category, prio, retries, delay, r.err)
			}
			if j != jobs || a != audits {
				t.Fatalf("refused enqueue (%s: %s) wrote %d jobs, %d audit rows", pg.Code, pg.Message, j-jobs, a-audits)
			}
			return
		}
		var found int
		if err := pool.QueryRow(ctx, `SELECT count(*) FROM public.job_queue_all WHERE id = $1::uuid
			AND ((job_type = $2 AND job_payload = $3::jsonb) OR $4)`, r.id, typ, payload, j == jobs).Scan(&found); err != nil {
			t.Fatal(err)
		}
		if found != 1 {
			t.Fatalf("enqueue returned %s but job_queue has %d matching jobs", r.id, found)
		}
		switch {
		case j == jobs+1:
		case j == jobs && key != "":
			// idempotent: the job with that key was already there (whatever
			// its type and payload: the key names the request)
		default:
			t.Fatalf("enqueue added %d jobs", j-jobs)
		}
	})
}
