package worker

import (
	"context"
	"encoding/json"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/v3ctl/v3ctl/internal/db"
	"github.com/v3ctl/v3ctl/internal/handlers"
	"github.com/v3ctl/v3ctl/internal/queue"
	"github.com/v3ctl/v3ctl/internal/sysconfig"
)

// systemMaintenance is the built-in system_maintenance job: reclaim timed
// out jobs, purge archived jobs finished more than purge_after_days ago
// (payload, default 30; statuses completed and cancelled), and run the
// usage period upkeep when the schema has one (public.usage_period_upkeep()).
func (w *Worker) systemMaintenance(ctx context.Context, job handlers.Job) (handlers.Result, error) {
	var p struct {
		PurgeAfterDays *int `json:"purge_after_days"`
	}
	if len(job.Payload) > 0 && string(job.Payload) != "null" {
		if err := json.Unmarshal(job.Payload, &p); err != nil {
			return handlers.Result{}, handlers.Permanent(fmt.Errorf("system_maintenance payload: %w", err))
		}
	}
	days := 30
	if p.PurgeAfterDays != nil {
		days = *p.PurgeAfterDays
	}
	if days < 1 {
		return handlers.Result{}, handlers.Permanent(fmt.Errorf("purge_after_days %d: must be at least 1", days))
	}
	rec, err := queue.Reclaim(ctx, w.pool, 1000)
	if err != nil {
		return handlers.Result{}, err
	}
	pur, err := queue.Purge(ctx, w.pool, time.Duration(days)*24*time.Hour, nil, 10000, "worker:"+w.cfg.WorkerID)
	if err != nil {
		return handlers.Result{}, err
	}
	out := map[string]any{"reclaimed": rec.Reclaimed, "dead_lettered": rec.DeadLettered,
		"purged": pur.Purged, "purge_after_days": days}
	var has bool
	if err := w.pool.QueryRow(ctx, `SELECT to_regprocedure('public.usage_period_upkeep()') IS NOT NULL`).Scan(&has); err != nil {
		return handlers.Result{}, err
	}
	if has {
		var raw []byte
		if err := w.pool.QueryRow(ctx, `SELECT to_jsonb(public.usage_period_upkeep())`).Scan(&raw); err != nil {
			return handlers.Result{}, err
		}
		out["usage_upkeep"] = json.RawMessage(raw)
	} else {
		out["usage_upkeep"] = "skipped: no public.usage_period_upkeep() in the schema"
	}
	b, _ := json.Marshal(out)
	return handlers.Result{Output: b}, nil
}

// auditCleanup is the built-in audit_cleanup job: delete audit rows older
// than audit.retention_days and leave one audit row saying how many went,
// in one transaction.
//
// TODO: move the DELETE into a SQL function (public.purge_audit_log(days))
// so that the app and v3ctl share one retention rule.
func (w *Worker) auditCleanup(ctx context.Context, job handlers.Job) (handlers.Result, error) {
	days, err := sysconfig.Int(ctx, w.pool, "audit.retention_days", 2555)
	if err != nil {
		return handlers.Result{}, err
	}
	if days < 1 {
		return handlers.Result{}, handlers.Permanent(fmt.Errorf("audit.retention_days is %d; must be at least 1", days))
	}
	var jobID any
	if job.ID != "" {
		jobID = job.ID
	}
	// The delete and its audit row commit together: if the audit row cannot
	// be written, nothing is deleted.
	var total int64
	err = db.InTx(ctx, w.pool, func(tx pgx.Tx) error {
		tag, err := tx.Exec(ctx, `DELETE FROM public.audit_log WHERE changed_at < now() - make_interval(days => $1::int)`, days)
		if err != nil {
			return err
		}
		total = tag.RowsAffected()
		_, err = tx.Exec(ctx, `SELECT public.log_audit_event('audit_log', NULL, 'PURGE', NULL,
			jsonb_build_object('deleted', $1::bigint, 'retention_days', $2::int), 'audit retention (audit_cleanup job)',
			'retention', NULL, NULL, $3::uuid, $4)`, total, days, jobID, "worker:"+w.cfg.WorkerID)
		return err
	})
	if err != nil {
		return handlers.Result{}, err
	}
	b, _ := json.Marshal(map[string]any{"deleted": total, "retention_days": days})
	return handlers.Result{Output: b}, nil
}
