// Package security holds the access rules of the V3 schema — who may read,
// write and execute what, per Supabase role — and the machinery that proves
// them against a live database: the catalog is enumerated (pg_class, pg_proc),
// every table and function must have a rule, and each rule is checked both in
// the catalog (has_table_privilege, has_function_privilege) and by running
// SELECT/INSERT/UPDATE/DELETE and EXECUTE as the real roles with JWT claims set
// the way PostgREST sets them. `v3ctl doctor` reads the same rules.
package security

import (
	_ "embed"
	"fmt"
	"sort"
	"strings"
	"sync"

	"gopkg.in/yaml.v3"
)

//go:embed rules.yaml
var rulesYAML []byte

// Roles the rules speak about, in display order.
var Roles = []string{"anon", "authenticated", "service_role"}

// DML privileges a table rule grants; the other table privileges
// (TRUNCATE, REFERENCES, TRIGGER) must never be held by anon/authenticated.
var DML = []string{"SELECT", "INSERT", "UPDATE", "DELETE"}

// TableAccess is what one role may do with one table.
type TableAccess struct {
	// Grants is the exact set of table privileges the role holds.
	Grants []string `yaml:"grants"`
	// Select, Update and Delete are SQL predicates over the table's rows
	// (evaluated by the table owner, with macros expanded) naming the rows
	// the persona must see, update or delete. Empty means "false" when the
	// privilege is not granted and "true" when it is.
	Select string `yaml:"select"`
	Update string `yaml:"update"`
	Delete string `yaml:"delete"`
}

// Has reports whether the rule grants priv.
func (a TableAccess) Has(priv string) bool {
	for _, g := range a.Grants {
		if strings.EqualFold(g, priv) {
			return true
		}
	}
	return false
}

// Predicate is the row predicate for an action ("select", "update", "delete").
func (a TableAccess) Predicate(action string) string {
	var p string
	switch action {
	case "select":
		p = a.Select
	case "update":
		p = a.Update
	case "delete":
		p = a.Delete
	}
	if !a.Has(strings.ToUpper(action)) {
		return "false"
	}
	if strings.TrimSpace(p) == "" {
		return "true"
	}
	return p
}

// UnmarshalYAML accepts the shorthands none, read and all.
func (a *TableAccess) UnmarshalYAML(n *yaml.Node) error {
	if n.Kind == yaml.ScalarNode {
		switch n.Value {
		case "none":
			*a = TableAccess{}
		case "read":
			*a = TableAccess{Grants: []string{"SELECT"}}
		case "all":
			*a = TableAccess{Grants: append([]string(nil), DML...)}
		default:
			return fmt.Errorf("line %d: table access %q: use none, read, all or a mapping", n.Line, n.Value)
		}
		return nil
	}
	type plain TableAccess
	var p plain
	if err := n.Decode(&p); err != nil {
		return err
	}
	for i, g := range p.Grants {
		p.Grants[i] = strings.ToUpper(g)
		if !isDML(p.Grants[i]) {
			return fmt.Errorf("line %d: grant %q: use %s", n.Line, g, strings.Join(DML, ", "))
		}
	}
	*a = TableAccess(p)
	return nil
}

func isDML(s string) bool {
	for _, d := range DML {
		if d == s {
			return true
		}
	}
	return false
}

// TableRule is the access of every role to one table.
type TableRule struct {
	Anon          TableAccess `yaml:"anon"`
	Authenticated TableAccess `yaml:"authenticated"`
	ServiceRole   TableAccess `yaml:"service_role"`
	// Note explains the rule (documentation only).
	Note string `yaml:"note"`
}

// For returns the access of role.
func (r TableRule) For(role string) TableAccess {
	switch role {
	case "anon":
		return r.Anon
	case "authenticated":
		return r.Authenticated
	default:
		return r.ServiceRole
	}
}

// FunctionRule names the roles that may execute a function.
type FunctionRule struct {
	Execute []string `yaml:"execute"`
	// Public allows EXECUTE to PUBLIC (only for harmless invoker helpers).
	Public bool   `yaml:"public"`
	Note   string `yaml:"note"`
}

// Allows reports whether role may execute.
func (r FunctionRule) Allows(role string) bool {
	for _, x := range r.Execute {
		if x == role {
			return true
		}
	}
	return false
}

// Probe is one scenario run as a persona: a statement and what must happen.
type Probe struct {
	Name string `yaml:"name"`
	// As is the persona: anon, A, B or service_role.
	As  string `yaml:"as"`
	SQL string `yaml:"sql"`
	// Want is ok, denied (SQLSTATE 42501) or a SQLSTATE.
	Want string `yaml:"want"`
	// Value, when set, is the text of the first column of the first row.
	Value *string `yaml:"value"`
	// Rows, when set, is the number of rows returned or affected.
	Rows *int64 `yaml:"rows"`
	// Setup, when set, is SQL run as the schema owner inside the probe's
	// savepoint before the statement (e.g. a GRANT that lets the persona
	// reach a trigger); it is rolled back with the probe.
	Setup string `yaml:"setup"`
}

// Section is the rules for the objects one migration creates.
type Section struct {
	Migration int64                   `yaml:"migration"`
	Name      string                  `yaml:"name"`
	Fixtures  string                  `yaml:"fixtures"`
	Tables    map[string]TableRule    `yaml:"tables"`
	Functions map[string]FunctionRule `yaml:"functions"`
	Probes    []Probe                 `yaml:"probes"`
}

// Rules is the whole rules file.
type Rules struct {
	Sections []Section `yaml:"sections"`
}

var (
	loadOnce sync.Once
	loaded   *Rules
	loadErr  error
)

// Load returns the embedded rules.
func Load() (*Rules, error) {
	loadOnce.Do(func() { loaded, loadErr = Parse(rulesYAML) })
	return loaded, loadErr
}

// MustLoad is Load that panics (the file is embedded and tested).
func MustLoad() *Rules {
	r, err := Load()
	if err != nil {
		panic(err)
	}
	return r
}

// Parse reads a rules document and checks it for duplicates and bad roles.
func Parse(b []byte) (*Rules, error) {
	var r Rules
	dec := yaml.NewDecoder(strings.NewReader(string(b)))
	dec.KnownFields(true)
	if err := dec.Decode(&r); err != nil {
		return nil, fmt.Errorf("security rules: %w", err)
	}
	tables, funcs := map[string]bool{}, map[string]bool{}
	for _, s := range r.Sections {
		for k := range s.Tables {
			if tables[k] {
				return nil, fmt.Errorf("security rules: table %s has two rules", k)
			}
			tables[k] = true
		}
		for k, f := range s.Functions {
			if funcs[k] {
				return nil, fmt.Errorf("security rules: function %s has two rules", k)
			}
			funcs[k] = true
			for _, role := range f.Execute {
				if !validRole(role) {
					return nil, fmt.Errorf("security rules: function %s: unknown role %q (use %s)", k, role, strings.Join(Roles, ", "))
				}
			}
		}
		for _, p := range s.Probes {
			switch p.As {
			case "anon", "A", "B", "service_role":
			default:
				return nil, fmt.Errorf("security rules: probe %q: unknown persona %q (use anon, A, B, service_role)", p.Name, p.As)
			}
			if p.Want == "" {
				return nil, fmt.Errorf("security rules: probe %q: want is required (ok, denied or a SQLSTATE)", p.Name)
			}
		}
	}
	return &r, nil
}

func validRole(s string) bool {
	for _, r := range Roles {
		if r == s {
			return true
		}
	}
	return false
}

// Table returns the rule for a table (schema-qualified name) and the
// migration that creates it.
func (r *Rules) Table(name string) (TableRule, int64, bool) {
	for _, s := range r.Sections {
		if t, ok := s.Tables[name]; ok {
			return t, s.Migration, true
		}
	}
	return TableRule{}, 0, false
}

// Function returns the rule for a function. Keys are either an exact
// signature "schema.name(type, type)" (argument types as oidvectortypes
// prints them) or a bare "schema.name" covering every overload.
func (r *Rules) Function(signature string) (FunctionRule, int64, bool) {
	for _, s := range r.Sections {
		if f, ok := s.Functions[signature]; ok {
			return f, s.Migration, true
		}
	}
	name := signature
	if i := strings.IndexByte(name, '('); i >= 0 {
		name = name[:i]
	}
	for _, s := range r.Sections {
		if f, ok := s.Functions[name]; ok {
			return f, s.Migration, true
		}
	}
	return FunctionRule{}, 0, false
}

// TableNames lists every table with a rule and the migration that creates it.
func (r *Rules) TableNames() map[string]int64 {
	out := map[string]int64{}
	for _, s := range r.Sections {
		for k := range s.Tables {
			out[k] = s.Migration
		}
	}
	return out
}

// FunctionKeys lists every function key with the migration that creates it.
func (r *Rules) FunctionKeys() map[string]int64 {
	out := map[string]int64{}
	for _, s := range r.Sections {
		for k := range s.Functions {
			out[k] = s.Migration
		}
	}
	return out
}

// Probes lists every probe in file order, with its migration.
func (r *Rules) Probes() []SectionProbe {
	var out []SectionProbe
	for _, s := range r.Sections {
		for _, p := range s.Probes {
			out = append(out, SectionProbe{Probe: p, Migration: s.Migration})
		}
	}
	return out
}

// SectionProbe is a probe with the migration it needs.
type SectionProbe struct {
	Probe
	Migration int64
}

// Fixtures returns the fixture SQL of every section whose migration is
// applied (version <= current), in order.
func (r *Rules) Fixtures(current int64) []string {
	secs := append([]Section(nil), r.Sections...)
	sort.SliceStable(secs, func(i, j int) bool { return secs[i].Migration < secs[j].Migration })
	var out []string
	for _, s := range secs {
		if s.Migration <= current && strings.TrimSpace(s.Fixtures) != "" {
			out = append(out, s.Fixtures)
		}
	}
	return out
}
