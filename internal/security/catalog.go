package security

import (
	"context"
	"fmt"
	"strings"

	"github.com/v3ctl/v3ctl/internal/db"
)

// Relation is a table, view or sequence from pg_class.
type Relation struct {
	OID  uint32 `json:"-"`
	Name string `json:"name"` // schema-qualified
	// Kind: r table, p partitioned table, v view, m materialized view,
	// f foreign table, S sequence.
	Kind            string `json:"kind"`
	RLS             bool   `json:"rls"`
	SecurityInvoker bool   `json:"security_invoker"`
}

// IsTable reports whether RLS applies to the relation.
func (r Relation) IsTable() bool { return r.Kind == "r" || r.Kind == "p" }

// Relations lists the relations of schema that no extension owns.
func Relations(ctx context.Context, q db.DB, schema string) ([]Relation, error) {
	rows, err := q.Query(ctx, `
SELECT c.oid, n.nspname || '.' || c.relname, c.relkind::text, c.relrowsecurity,
       coalesce(c.reloptions && ARRAY['security_invoker=true','security_invoker=on','security_invoker=1'], false)
FROM pg_catalog.pg_class c
JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = $1 AND c.relkind IN ('r','p','v','m','f','S')
  AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_depend d
                  WHERE d.classid = 'pg_catalog.pg_class'::regclass AND d.objid = c.oid AND d.deptype = 'e')
ORDER BY 2`, schema)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []Relation
	for rows.Next() {
		var r Relation
		if err := rows.Scan(&r.OID, &r.Name, &r.Kind, &r.RLS, &r.SecurityInvoker); err != nil {
			return nil, err
		}
		out = append(out, r)
	}
	return out, rows.Err()
}

// Function is a function or procedure from pg_proc.
type Function struct {
	OID uint32 `json:"-"`
	// Name is schema-qualified; Signature adds the argument types.
	Name      string   `json:"name"`
	Signature string   `json:"signature"`
	ArgTypes  []string `json:"-"`
	Kind      string   `json:"kind"` // f function, p procedure, a aggregate, w window
	Definer   bool     `json:"security_definer"`
	Config    []string `json:"config"`
	Trigger   bool     `json:"trigger"`
	Variadic  bool     `json:"variadic"`
	// Pseudo: an argument has a pseudo-type (anyelement, internal...): the
	// function cannot be called with typed NULLs.
	Pseudo bool `json:"-"`
	// PublicExecute: EXECUTE is granted to PUBLIC (also when proacl is NULL,
	// the built-in default).
	PublicExecute bool `json:"public_execute"`
	// Execute is has_function_privilege per role that exists.
	Execute map[string]bool `json:"execute"`
}

// SearchPath returns the function's fixed search_path setting and whether
// one is set.
func (f Function) SearchPath() (string, bool) {
	for _, c := range f.Config {
		if strings.HasPrefix(c, "search_path=") {
			return strings.TrimPrefix(c, "search_path="), true
		}
	}
	return "", false
}

// EmptySearchPath reports whether search_path is fixed to the empty string.
func (f Function) EmptySearchPath() bool {
	v, ok := f.SearchPath()
	return ok && (v == `""` || v == "''" || v == "")
}

// CallSQL is a statement calling the function with typed NULL arguments, or
// "" when it cannot be called that way (triggers, aggregates, pseudo-types).
func (f Function) CallSQL() string {
	if f.Trigger || f.Pseudo || (f.Kind != "f" && f.Kind != "p") {
		return ""
	}
	args := make([]string, len(f.ArgTypes))
	for i, t := range f.ArgTypes {
		args[i] = "NULL::" + t
	}
	if f.Variadic && len(args) > 0 {
		args[len(args)-1] = "VARIADIC " + args[len(args)-1]
	}
	name := quoteQualified(f.Name)
	if f.Kind == "p" {
		return fmt.Sprintf("CALL %s(%s)", name, strings.Join(args, ", "))
	}
	return fmt.Sprintf("SELECT * FROM %s(%s)", name, strings.Join(args, ", "))
}

func quoteQualified(name string) string {
	parts := strings.SplitN(name, ".", 2)
	for i, p := range parts {
		parts[i] = `"` + strings.ReplaceAll(p, `"`, `""`) + `"`
	}
	return strings.Join(parts, ".")
}

// ExistingRoles returns which of Roles exist in the cluster.
func ExistingRoles(ctx context.Context, q db.DB) (map[string]bool, error) {
	rows, err := q.Query(ctx, `SELECT rolname FROM pg_catalog.pg_roles WHERE rolname = ANY($1)`, Roles)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	out := map[string]bool{}
	for rows.Next() {
		var s string
		if err := rows.Scan(&s); err != nil {
			return nil, err
		}
		out[s] = true
	}
	return out, rows.Err()
}

// Functions lists the functions of the given schemas that no extension owns,
// with their execute privileges for each of Roles that exists.
func Functions(ctx context.Context, q db.DB, schemas []string) ([]Function, error) {
	roles, err := ExistingRoles(ctx, q)
	if err != nil {
		return nil, err
	}
	rows, err := q.Query(ctx, `
SELECT p.oid, n.nspname || '.' || p.proname, pg_catalog.oidvectortypes(p.proargtypes),
       ARRAY(SELECT pg_catalog.format_type(u.t, NULL) FROM unnest(p.proargtypes::oid[]) WITH ORDINALITY u(t, i) ORDER BY u.i),
       p.prokind::text, p.prosecdef, coalesce(p.proconfig, '{}'),
       p.prorettype = 'pg_catalog.trigger'::regtype OR p.prorettype = 'pg_catalog.event_trigger'::regtype,
       p.provariadic <> 0,
       EXISTS (SELECT 1 FROM unnest(p.proargtypes::oid[]) u(t) JOIN pg_catalog.pg_type ty ON ty.oid = u.t WHERE ty.typtype = 'p'),
       p.proacl IS NULL OR EXISTS (SELECT 1 FROM pg_catalog.aclexplode(p.proacl) a WHERE a.grantee = 0 AND a.privilege_type = 'EXECUTE')
FROM pg_catalog.pg_proc p
JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace
WHERE n.nspname = ANY($1)
  AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_depend d
                  WHERE d.classid = 'pg_catalog.pg_proc'::regclass AND d.objid = p.oid AND d.deptype = 'e')
ORDER BY 2, 3`, schemas)
	if err != nil {
		return nil, err
	}
	var out []Function
	for rows.Next() {
		var f Function
		var args string
		if err := rows.Scan(&f.OID, &f.Name, &args, &f.ArgTypes, &f.Kind, &f.Definer, &f.Config, &f.Trigger,
			&f.Variadic, &f.Pseudo, &f.PublicExecute); err != nil {
			rows.Close()
			return nil, err
		}
		f.Signature = f.Name + "(" + args + ")"
		out = append(out, f)
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return nil, err
	}
	for i := range out {
		out[i].Execute = map[string]bool{}
		for _, role := range Roles {
			if !roles[role] {
				continue
			}
			var ok bool
			if err := q.QueryRow(ctx, `SELECT pg_catalog.has_function_privilege($1, $2::oid, 'EXECUTE')`, role, out[i].OID).Scan(&ok); err != nil {
				return nil, err
			}
			out[i].Execute[role] = ok
		}
	}
	return out, nil
}

// TablePrivileges are the privileges role holds on a relation: table-level
// ones by name, column-level-only ones as "PRIV(columns)".
func TablePrivileges(ctx context.Context, q db.DB, role string, oid uint32, kind string) ([]string, error) {
	if kind == "S" {
		var out []string
		for _, p := range []string{"USAGE", "SELECT", "UPDATE"} {
			var ok bool
			if err := q.QueryRow(ctx, `SELECT pg_catalog.has_sequence_privilege($1, $2::oid, $3)`, role, oid, p).Scan(&ok); err != nil {
				return nil, err
			}
			if ok {
				out = append(out, p)
			}
		}
		return out, nil
	}
	var out []string
	for _, p := range []string{"SELECT", "INSERT", "UPDATE", "DELETE", "TRUNCATE", "REFERENCES", "TRIGGER"} {
		var ok bool
		if err := q.QueryRow(ctx, `SELECT pg_catalog.has_table_privilege($1, $2::oid, $3)`, role, oid, p).Scan(&ok); err != nil {
			return nil, err
		}
		if ok {
			out = append(out, p)
			continue
		}
		if p == "SELECT" || p == "INSERT" || p == "UPDATE" || p == "REFERENCES" {
			var cols []string
			if err := q.QueryRow(ctx, `SELECT coalesce(array_agg(a.attname::text ORDER BY a.attnum), '{}')
				FROM pg_catalog.pg_attribute a
				WHERE a.attrelid = $2::oid AND a.attnum > 0 AND NOT a.attisdropped
				  AND pg_catalog.has_column_privilege($1, $2::oid, a.attnum, $3)`, role, oid, p).Scan(&cols); err != nil {
				return nil, err
			}
			if len(cols) > 0 {
				out = append(out, p+"("+strings.Join(cols, ",")+")")
			}
		}
	}
	return out, nil
}

// AppliedVersion is the newest applied migration recorded in the database
// (0 when none or when the version table does not exist).
func AppliedVersion(ctx context.Context, q db.DB) (int64, error) {
	var exists bool
	if err := q.QueryRow(ctx, `SELECT pg_catalog.to_regclass('v3ctl.schema_migrations') IS NOT NULL`).Scan(&exists); err != nil || !exists {
		return 0, err
	}
	var v int64
	err := q.QueryRow(ctx, `SELECT coalesce(max(version_id), 0) FROM v3ctl.schema_migrations WHERE is_applied`).Scan(&v)
	return v, err
}
