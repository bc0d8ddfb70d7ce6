package sysconfig_test

import (
	"context"
	"encoding/json"
	"errors"
	"testing"

	"github.com/v3ctl/v3ctl/internal/db"
	"github.com/v3ctl/v3ctl/internal/sysconfig"
	"github.com/v3ctl/v3ctl/internal/testdb"
)

func auditCount(t *testing.T, q db.DB) int {
	var n int
	if err := q.QueryRow(context.Background(), `SELECT count(*) FROM audit_log WHERE table_name='system_configuration'`).Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}

func TestFlagSetStoresJSONBooleanAndAudits(t *testing.T) {
	t.Parallel()
	pool := testdb.New(t)
	ctx := context.Background()
	e, err := sysconfig.Resolve(ctx, pool, "billing_enabled", true)
	if err != nil {
		t.Fatal(err)
	}
	v, err := sysconfig.ParseValue(e, "true")
	if err != nil {
		t.Fatal(err)
	}
	ch, err := sysconfig.Set(ctx, pool, e.Key, v, "alice", "launch", false)
	if err != nil {
		t.Fatal(err)
	}
	if !ch.Changed || string(ch.OldValue) != "false" || string(ch.NewValue) != "true" {
		t.Fatalf("change: %+v", ch)
	}
	var typ string
	if err := pool.QueryRow(ctx, `SELECT jsonb_typeof(config_value) FROM system_configuration WHERE config_key='features.billing_enabled'`).Scan(&typ); err != nil || typ != "boolean" {
		t.Fatalf("stored type %q err %v", typ, err)
	}
	h, err := sysconfig.History(ctx, pool, e.Key, true, 10)
	if err != nil || len(h) != 1 {
		t.Fatalf("history %v %v", h, err)
	}
	if *h[0].Actor != "alice" || *h[0].Reason != "launch" || string(h[0].OldValue) != "false" || string(h[0].NewValue) != "true" {
		t.Fatalf("audit row: %+v", h[0])
	}
	// Setting the same value again changes nothing and writes no audit row.
	ch, err = sysconfig.Set(ctx, pool, e.Key, v, "alice", "", false)
	if err != nil || ch.Changed || auditCount(t, pool) != 1 {
		t.Fatalf("repeat set: %+v %v audit=%d", ch, err, auditCount(t, pool))
	}
	var flags []byte
	if err := pool.QueryRow(ctx, `SELECT get_feature_flags()`).Scan(&flags); err != nil {
		t.Fatal(err)
	}
	var m map[string]any
	_ = json.Unmarshal(flags, &m)
	if m["billing_enabled"] != true {
		t.Fatalf("get_feature_flags: %s", flags)
	}
}

func TestBadValuesRefusedWithoutWrites(t *testing.T) {
	t.Parallel()
	pool := testdb.New(t)
	ctx := context.Background()
	e, err := sysconfig.Resolve(ctx, pool, "billing_enabled", true)
	if err != nil {
		t.Fatal(err)
	}
	var ive *sysconfig.InvalidValueError
	if _, err := sysconfig.ParseValue(e, "maybe"); !errors.As(err, &ive) {
		t.Fatalf("maybe: %v", err)
	}
	var uke *sysconfig.UnknownKeyError
	if _, err := sysconfig.Resolve(ctx, pool, "nope", true); !errors.As(err, &uke) || len(uke.Valid) != 3 {
		t.Fatalf("unknown flag: %v", err)
	}
	// The SQL layer refuses too, whatever the caller sends.
	for _, kv := range [][2]string{
		{"features.billing_enabled", `"true"`},
		{"worker.timeout_seconds", `0`},
		{"worker.timeout_seconds", `1.5`},
		{"worker.heartbeat_interval_seconds", `"30"`},
		{"no.such_key", `1`},
	} {
		_, err := sysconfig.Set(ctx, pool, kv[0], json.RawMessage(kv[1]), "x", "", false)
		if !db.IsInvalidInput(err) {
			t.Errorf("%s=%s: want a validation error, got %v", kv[0], kv[1], err)
		}
	}
	s, err := sysconfig.Resolve(ctx, pool, "worker.timeout_seconds", false)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := sysconfig.ParseValue(s, "-5"); !errors.As(err, &ive) {
		t.Fatalf("negative timeout: %v", err)
	}
	if _, err := sysconfig.ParseValue(s, "abc"); !errors.As(err, &ive) {
		t.Fatalf("non-integer timeout: %v", err)
	}
	if n := auditCount(t, pool); n != 0 {
		t.Fatalf("refused changes wrote %d audit rows", n)
	}
	if _, err := pool.Exec(ctx, `UPDATE system_configuration SET config_value='"yes"' WHERE config_key='features.billing_enabled'`); err == nil {
		t.Fatal("a direct UPDATE with a non-boolean flag value must be refused")
	}
}

func TestDryRunChangesNothing(t *testing.T) {
	t.Parallel()
	pool := testdb.New(t)
	ctx := context.Background()
	ch, err := sysconfig.Set(ctx, pool, "worker.timeout_seconds", json.RawMessage("60"), "x", "", true)
	if err != nil || !ch.DryRun || !ch.Changed {
		t.Fatalf("dry run: %+v %v", ch, err)
	}
	n, err := sysconfig.Int(ctx, pool, "worker.timeout_seconds", 0)
	if err != nil || n != 1800 {
		t.Fatalf("dry run changed the value to %d (%v)", n, err)
	}
	if auditCount(t, pool) != 0 {
		t.Fatal("dry run wrote an audit row")
	}
}
