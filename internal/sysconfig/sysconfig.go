// Package sysconfig reads and changes system_configuration: feature flags
// (features.*) and settings (every other key). Validation and auditing live
// in the SQL functions set_system_config / validate_system_config_value, so
// a change made here, from the app or by hand behaves the same.
package sysconfig

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"sort"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/jackc/pgx/v5"

	"github.com/v3ctl/v3ctl/internal/db"
)

// FlagPrefix is the key prefix of feature flags.
const FlagPrefix = "features."

// Entry is one configuration key.
type Entry struct {
	Key             string          `json:"key" yaml:"key"`
	Value           json.RawMessage `json:"value" yaml:"value"`
	Default         json.RawMessage `json:"default" yaml:"default"`
	Type            string          `json:"type" yaml:"type"`
	Kind            string          `json:"kind" yaml:"kind"`
	Min             *float64        `json:"min,omitempty" yaml:"min,omitempty"`
	Max             *float64        `json:"max,omitempty" yaml:"max,omitempty"`
	Description     string          `json:"description" yaml:"description"`
	Sensitive       bool            `json:"sensitive" yaml:"sensitive"`
	RequiresRestart bool            `json:"requires_restart" yaml:"requires_restart"`
	UpdatedBy       *string         `json:"updated_by" yaml:"updated_by"`
	UpdatedAt       time.Time       `json:"updated_at" yaml:"updated_at"`
}

// IsFlag reports whether the entry is a feature flag.
func (e Entry) IsFlag() bool { return e.Type == "feature_flag" }

// Display is the value as shown to a person; sensitive values are hidden.
func (e Entry) Display() string {
	if e.Sensitive {
		return "(hidden)"
	}
	var s string
	if json.Unmarshal(e.Value, &s) == nil {
		return s
	}
	return string(e.Value)
}

const selectEntries = `SELECT config_key, config_value, default_value, config_type, value_kind,
	min_value::float8, max_value::float8, description, is_sensitive, requires_restart, updated_by, updated_at
	FROM public.system_configuration`

func scan(rows pgx.Rows) ([]Entry, error) {
	defer rows.Close()
	var out []Entry
	for rows.Next() {
		var e Entry
		var v, d []byte
		if err := rows.Scan(&e.Key, &v, &d, &e.Type, &e.Kind, &e.Min, &e.Max, &e.Description,
			&e.Sensitive, &e.RequiresRestart, &e.UpdatedBy, &e.UpdatedAt); err != nil {
			return nil, err
		}
		e.Value, e.Default = v, d
		out = append(out, e)
	}
	return out, rows.Err()
}

// List returns flags (flags=true) or settings (flags=false), sorted by key.
func List(ctx context.Context, q db.DB, flags bool) ([]Entry, error) {
	cond := ` WHERE config_type = 'feature_flag'`
	if !flags {
		cond = ` WHERE config_type <> 'feature_flag'`
	}
	rows, err := q.Query(ctx, selectEntries+cond+` ORDER BY config_key`)
	if err != nil {
		return nil, db.Explain(err)
	}
	return scan(rows)
}

// UnknownKeyError names a key that does not exist and lists the valid ones.
type UnknownKeyError struct {
	Key   string
	Valid []string
}

func (e *UnknownKeyError) Error() string {
	return fmt.Sprintf("unknown key %q; valid: %s", e.Key, strings.Join(e.Valid, ", "))
}

// InvalidValueError is a value refused for a key.
type InvalidValueError struct {
	Key, Value, Reason string
}

func (e *InvalidValueError) Error() string {
	return fmt.Sprintf("invalid value %q for %s: %s", e.Value, e.Key, e.Reason)
}

// Resolve maps a user-given name to a full key: flags accept the short name
// (billing_enabled -> features.billing_enabled).
func Resolve(ctx context.Context, q db.DB, name string, flags bool) (Entry, error) {
	all, err := List(ctx, q, flags)
	if err != nil {
		return Entry{}, err
	}
	key := name
	if flags && !strings.HasPrefix(name, FlagPrefix) {
		key = FlagPrefix + name
	}
	valid := make([]string, 0, len(all))
	for _, e := range all {
		if e.Key == key {
			return e, nil
		}
		if flags {
			valid = append(valid, strings.TrimPrefix(e.Key, FlagPrefix))
		} else {
			valid = append(valid, e.Key)
		}
	}
	sort.Strings(valid)
	return Entry{}, &UnknownKeyError{Key: name, Valid: valid}
}

// ParseValue turns a command-line value into JSON for the entry's kind.
// Booleans accept true/false (also on/off, yes/no, 1/0); anything else is
// refused with the valid choices.
func ParseValue(e Entry, raw string) (json.RawMessage, error) {
	s := strings.TrimSpace(raw)
	switch e.Kind {
	case "boolean":
		switch strings.ToLower(s) {
		case "true", "on", "yes", "1":
			return json.RawMessage("true"), nil
		case "false", "off", "no", "0":
			return json.RawMessage("false"), nil
		}
		return nil, &InvalidValueError{Key: e.Key, Value: raw, Reason: "must be a boolean: true or false"}
	case "integer":
		n, err := strconv.ParseInt(s, 10, 64)
		if err != nil {
			return nil, &InvalidValueError{Key: e.Key, Value: raw, Reason: "must be an integer" + rangeText(e)}
		}
		if err := checkRange(e, float64(n), raw); err != nil {
			return nil, err
		}
		return json.RawMessage(strconv.FormatInt(n, 10)), nil
	case "number":
		f, err := strconv.ParseFloat(s, 64)
		if err != nil || math.IsNaN(f) || math.IsInf(f, 0) { // JSON has no NaN or Infinity
			return nil, &InvalidValueError{Key: e.Key, Value: raw, Reason: "must be a number" + rangeText(e)}
		}
		if err := checkRange(e, f, raw); err != nil {
			return nil, err
		}
		return json.RawMessage(strconv.FormatFloat(f, 'f', -1, 64)), nil
	case "string":
		if !utf8.ValidString(raw) || strings.ContainsRune(raw, 0) { // jsonb refuses both
			return nil, &InvalidValueError{Key: e.Key, Value: raw, Reason: "must be UTF-8 text without NUL characters"}
		}
		b, _ := json.Marshal(raw)
		return b, nil
	}
	return nil, fmt.Errorf("%s has an unknown kind %q", e.Key, e.Kind)
}

func rangeText(e Entry) string {
	switch {
	case e.Min != nil && e.Max != nil:
		return fmt.Sprintf(" between %g and %g", *e.Min, *e.Max)
	case e.Min != nil:
		return fmt.Sprintf(" of at least %g", *e.Min)
	case e.Max != nil:
		return fmt.Sprintf(" of at most %g", *e.Max)
	}
	return ""
}

func checkRange(e Entry, v float64, raw string) error {
	if (e.Min != nil && v < *e.Min) || (e.Max != nil && v > *e.Max) {
		return &InvalidValueError{Key: e.Key, Value: raw, Reason: "must be" + rangeText(e)}
	}
	return nil
}

// Change is the outcome of Set.
type Change struct {
	Key      string          `json:"key" yaml:"key"`
	OldValue json.RawMessage `json:"old_value" yaml:"old_value"`
	NewValue json.RawMessage `json:"new_value" yaml:"new_value"`
	Changed  bool            `json:"changed" yaml:"changed"`
	DryRun   bool            `json:"dry_run" yaml:"dry_run"`
}

// Set validates and stores value for key through set_system_config, which
// writes the audit row in the same transaction. With dryRun the change is
// made and validated inside a transaction that is rolled back.
func Set(ctx context.Context, conn db.TxBeginner, key string, value json.RawMessage, actor, reason string, dryRun bool) (Change, error) {
	var ch Change
	err := db.InTx(ctx, conn, func(tx pgx.Tx) error {
		var out []byte
		if err := tx.QueryRow(ctx, `SELECT public.set_system_config($1, $2::jsonb, $3, $4)`,
			key, string(value), actor, nullIfEmpty(reason)).Scan(&out); err != nil {
			return db.Explain(err)
		}
		if err := json.Unmarshal(out, &struct {
			Key      *string          `json:"key"`
			OldValue *json.RawMessage `json:"old_value"`
			NewValue *json.RawMessage `json:"new_value"`
			Changed  *bool            `json:"changed"`
		}{&ch.Key, &ch.OldValue, &ch.NewValue, &ch.Changed}); err != nil {
			return err
		}
		if dryRun {
			ch.DryRun = true
			return errDryRun
		}
		return nil
	})
	if errors.Is(err, errDryRun) {
		return ch, nil
	}
	return ch, err
}

var errDryRun = errors.New("dry run: rolled back")

func nullIfEmpty(s string) any {
	if s == "" {
		return nil
	}
	return s
}

// HistoryEntry is one audited change of a key.
type HistoryEntry struct {
	At       time.Time       `json:"changed_at" yaml:"changed_at"`
	Key      string          `json:"key" yaml:"key"`
	OldValue json.RawMessage `json:"old_value" yaml:"old_value"`
	NewValue json.RawMessage `json:"new_value" yaml:"new_value"`
	Actor    *string         `json:"actor" yaml:"actor"`
	Reason   *string         `json:"reason" yaml:"reason"`
}

// History lists audited changes, newest first; key "" means all keys of the
// kind (flags or settings).
func History(ctx context.Context, q db.DB, key string, flags bool, limit int) ([]HistoryEntry, error) {
	if limit <= 0 {
		limit = 50
	}
	rows, err := q.Query(ctx, `SELECT a.changed_at, a.record_id, a.old_values->'config_value', a.new_values->'config_value', a.changed_by, a.reason
		FROM public.audit_log a
		WHERE a.table_name = 'system_configuration'
		  AND ($1 = '' OR a.record_id = $1)
		  AND (a.record_id LIKE 'features.%') = $2
		ORDER BY a.changed_at DESC, a.id DESC
		LIMIT $3`, key, flags, limit)
	if err != nil {
		return nil, db.Explain(err)
	}
	defer rows.Close()
	var out []HistoryEntry
	for rows.Next() {
		var h HistoryEntry
		var o, n []byte
		if err := rows.Scan(&h.At, &h.Key, &o, &n, &h.Actor, &h.Reason); err != nil {
			return nil, err
		}
		h.OldValue, h.NewValue = o, n
		out = append(out, h)
	}
	return out, rows.Err()
}

// Bool reads a boolean key (false when missing).
func Bool(ctx context.Context, q db.DB, key string) (bool, error) {
	var v bool
	err := q.QueryRow(ctx, `SELECT coalesce((SELECT config_value = 'true'::jsonb FROM public.system_configuration WHERE config_key = $1), false)`, key).Scan(&v)
	return v, db.Explain(err)
}

// Int reads an integer key, def when missing.
func Int(ctx context.Context, q db.DB, key string, def int64) (int64, error) {
	var v int64
	err := q.QueryRow(ctx, `SELECT coalesce((SELECT (config_value #>> '{}')::bigint FROM public.system_configuration WHERE config_key = $1), $2)`, key, def).Scan(&v)
	return v, db.Explain(err)
}
