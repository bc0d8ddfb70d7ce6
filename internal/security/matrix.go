package security

import (
	"context"
	"errors"
	"fmt"
	"regexp"
	"sort"
	"strconv"
	"strings"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
)

// Fixture identities (fixed, so rules and probes can name them).
const (
	AccountA     = "0000000a-0000-4000-8000-00000000000a"
	AccountB     = "0000000b-0000-4000-8000-00000000000b"
	ProfileASelf = "1000000a-0000-4000-8000-00000000000a"
	ProfileADep  = "2000000a-0000-4000-8000-00000000000a"
	ProfileAArch = "3000000a-0000-4000-8000-00000000000a"
	ProfileBSelf = "1000000b-0000-4000-8000-00000000000b"
)

// Persona is who a statement runs as.
type Persona struct {
	Name string `json:"name"` // anon, A, B, service_role
	Role string `json:"role"`
	UID  string `json:"uid,omitempty"`
}

// Personas are the four callers of the matrix.
var Personas = []Persona{
	{Name: "anon", Role: "anon"},
	{Name: "A", Role: "authenticated", UID: AccountA},
	{Name: "B", Role: "authenticated", UID: AccountB},
	{Name: "service_role", Role: "service_role"},
}

// PersonaByName returns the persona called name.
func PersonaByName(name string) (Persona, bool) {
	for _, p := range Personas {
		if p.Name == name {
			return p, true
		}
	}
	return Persona{}, false
}

// Claims is the request.jwt.claims PostgREST would set for the persona.
func (p Persona) Claims() string {
	switch {
	case p.UID != "":
		email := strings.ToLower(p.Name) + "@example.test"
		return fmt.Sprintf(`{"sub":%q,"role":%q,"aud":"authenticated","email":%q}`, p.UID, p.Role, email)
	default:
		return fmt.Sprintf(`{"role":%q}`, p.Role)
	}
}

func uuidLit(s string) string {
	if s == "" {
		return "NULL::uuid"
	}
	return "'" + s + "'::uuid"
}

var macroRE = regexp.MustCompile(`(^|[^:]):([a-z_]+)\b`)

// Expand replaces the rule macros (:uid, :profiles, ...) for persona p.
func Expand(sql string, p Persona) string {
	other := ""
	switch p.Name {
	case "A":
		other = AccountB
	case "B":
		other = AccountA
	}
	vals := map[string]string{
		"uid":    uuidLit(p.UID),
		"other":  uuidLit(other),
		"a_uid":  uuidLit(AccountA),
		"b_uid":  uuidLit(AccountB),
		"a_self": uuidLit(ProfileASelf),
		"a_dep":  uuidLit(ProfileADep),
		"a_arch": uuidLit(ProfileAArch),
		"b_self": uuidLit(ProfileBSelf),
		"profiles": `(SELECT up.id FROM public.user_profiles up WHERE up.account_owner_id = :uid AND NOT up.archived
			UNION SELECT pap.profile_id FROM public.profile_access_permissions pap
			JOIN public.user_profiles up ON up.id = pap.profile_id
			WHERE pap.user_id = :uid AND pap.is_active AND pap.revoked_at IS NULL
			  AND (pap.expires_at IS NULL OR pap.expires_at > pg_catalog.now()) AND NOT up.archived)`,
		"own_profiles": `(SELECT up.id FROM public.user_profiles up WHERE up.account_owner_id = :uid)`,
	}
	for i := 0; i < 3; i++ {
		sql = macroRE.ReplaceAllStringFunc(sql, func(m string) string {
			sub := macroRE.FindStringSubmatch(m)
			if v, ok := vals[sub[2]]; ok {
				return sub[1] + v
			}
			return m
		})
	}
	return sql
}

// LoadFixtures inserts the fixtures of every applied migration's section, as
// the connecting (owner) role, and commits them.
func LoadFixtures(ctx context.Context, pool *pgxpool.Pool, r *Rules) error {
	current, err := AppliedVersion(ctx, pool)
	if err != nil {
		return err
	}
	for _, f := range r.Fixtures(current) {
		if _, err := pool.Exec(ctx, Expand(f, Persona{Name: "owner"})); err != nil {
			return fmt.Errorf("fixtures: %w", err)
		}
	}
	return nil
}

// Cell is one checked fact of the matrix.
type Cell struct {
	Object  string `json:"object"`
	Persona string `json:"persona"`
	Check   string `json:"check"`
	Want    string `json:"want"`
	Got     string `json:"got"`
	OK      bool   `json:"ok"`
}

// Matrix is every checked fact.
type Matrix struct {
	Cells []Cell `json:"cells"`
	// Tables and Functions count the catalog objects covered.
	Tables, Functions, Probes int
}

func (m *Matrix) add(obj, persona, check, want, got string) {
	m.Cells = append(m.Cells, Cell{Object: obj, Persona: persona, Check: check, Want: want, Got: got, OK: want == got})
}

func (m *Matrix) addOK(obj, persona, check, want, got string, ok bool) {
	m.Cells = append(m.Cells, Cell{Object: obj, Persona: persona, Check: check, Want: want, Got: got, OK: ok})
}

// Failures are the cells whose observation differs from the rule.
func (m *Matrix) Failures() []Cell {
	var out []Cell
	for _, c := range m.Cells {
		if !c.OK {
			out = append(out, c)
		}
	}
	return out
}

// Format renders cells as aligned text.
func Format(cells []Cell) string {
	w := [5]int{6, 7, 5, 4, 3}
	for _, c := range cells {
		for i, s := range []string{c.Object, c.Persona, c.Check, c.Want, c.Got} {
			if len(s) > w[i] && len(s) < 70 {
				w[i] = len(s)
			}
		}
	}
	var b strings.Builder
	row := func(ok string, s ...string) {
		fmt.Fprintf(&b, "%-4s %-*s  %-*s  %-*s  want %-*s  got %s\n", ok, w[0], s[0], w[1], s[1], w[2], s[2], w[3], s[3], s[4])
	}
	for _, c := range cells {
		ok := "ok"
		if !c.OK {
			ok = "FAIL"
		}
		row(ok, c.Object, c.Persona, c.Check, c.Want, c.Got)
	}
	return b.String()
}

// Grid is a compact per-object view: one line per table or function with
// what each persona could do, as observed.
func (m *Matrix) Grid() string {
	type key struct{ obj, persona string }
	obs := map[key][]string{}
	var objs []string
	seen := map[string]bool{}
	for _, c := range m.Cells {
		if !seen[c.Object] {
			seen[c.Object] = true
			objs = append(objs, c.Object)
		}
		var tag string
		switch c.Check {
		case "select":
			tag = "S:" + c.Got
		case "update":
			tag = "U:" + c.Got
		case "delete":
			tag = "D:" + c.Got
		case "insert":
			tag = "I:" + c.Got
		case "execute":
			tag = "X:" + c.Got
		default:
			continue
		}
		k := key{c.Object, c.Persona}
		obs[k] = append(obs[k], tag)
	}
	var b strings.Builder
	fmt.Fprintf(&b, "%-44s", "object")
	for _, p := range Personas {
		fmt.Fprintf(&b, " | %-30s", p.Name)
	}
	b.WriteString("\n")
	for _, o := range objs {
		line := fmt.Sprintf("%-44s", o)
		any := false
		for _, p := range Personas {
			s := strings.Join(obs[key{o, p.Name}], " ")
			if s != "" {
				any = true
			}
			line += fmt.Sprintf(" | %-30s", s)
		}
		if any {
			b.WriteString(line + "\n")
		}
	}
	return b.String()
}

// result is what one statement did.
type result struct {
	Code   string // SQLSTATE, "" on success
	Msg    string
	Rows   int64
	Values []string // first column of each row, as text
}

func (r result) denied() bool {
	return r.Code == "42501"
}

// privDenied: refused by the privilege system (not by a function's own check).
func (r result) privDenied() bool {
	return r.Code == "42501" && strings.HasPrefix(r.Msg, "permission denied for")
}

func (r result) String() string {
	if r.Code != "" {
		if r.denied() {
			return "denied"
		}
		return "error " + r.Code
	}
	return "ok"
}

// session runs statements as one persona inside a transaction that is
// rolled back at the end; every statement runs in its own savepoint.
type session struct {
	tx pgx.Tx
	p  Persona
}

func openSession(ctx context.Context, pool *pgxpool.Pool, p Persona) (*session, error) {
	tx, err := pool.Begin(ctx)
	if err != nil {
		return nil, err
	}
	// What PostgREST does for each request.
	for _, q := range []string{
		`SELECT pg_catalog.set_config('request.jwt.claims', $1, true)`,
		`SELECT pg_catalog.set_config('request.method', 'POST', true)`,
		`SET LOCAL statement_timeout = '20s'`,
		`SET LOCAL lock_timeout = '5s'`,
		`SET LOCAL ROLE ` + pgx.Identifier{p.Role}.Sanitize(),
	} {
		var args []any
		if strings.Contains(q, "$1") {
			args = append(args, p.Claims())
		}
		if _, err := tx.Exec(ctx, q, args...); err != nil {
			_ = tx.Rollback(ctx)
			return nil, fmt.Errorf("become %s: %w", p.Name, err)
		}
	}
	return &session{tx: tx, p: p}, nil
}

func (s *session) close(ctx context.Context) { _ = s.tx.Rollback(ctx) }

func (s *session) try(ctx context.Context, sql string) (result, error) {
	return s.trySetup(ctx, "", sql)
}

// trySetup runs setup as the session user (the schema owner), then sql as
// the persona, in one savepoint that is rolled back.
func (s *session) trySetup(ctx context.Context, setup, sql string) (result, error) {
	if _, err := s.tx.Exec(ctx, "SAVEPOINT matrix"); err != nil {
		return result{}, err
	}
	if setup != "" {
		for _, q := range []string{`RESET ROLE`, setup, `SET LOCAL ROLE ` + pgx.Identifier{s.p.Role}.Sanitize()} {
			if _, err := s.tx.Exec(ctx, q, pgx.QueryExecModeSimpleProtocol); err != nil {
				_, _ = s.tx.Exec(ctx, "ROLLBACK TO SAVEPOINT matrix")
				_, _ = s.tx.Exec(ctx, "RELEASE SAVEPOINT matrix")
				return result{}, fmt.Errorf("probe setup as owner: %w", err)
			}
		}
	}
	var res result
	rows, err := s.tx.Query(ctx, sql, pgx.QueryExecModeSimpleProtocol)
	if err == nil {
		for rows.Next() {
			raw := rows.RawValues()
			if len(raw) > 0 {
				if raw[0] == nil {
					res.Values = append(res.Values, "NULL")
				} else {
					res.Values = append(res.Values, string(raw[0]))
				}
			}
		}
		rows.Close()
		err = rows.Err()
		res.Rows = rows.CommandTag().RowsAffected()
	}
	if err != nil {
		var pg *pgconn.PgError
		if !errors.As(err, &pg) {
			return result{}, err
		}
		res.Code, res.Msg = pg.Code, pg.Message
	}
	if _, err := s.tx.Exec(ctx, "ROLLBACK TO SAVEPOINT matrix"); err != nil {
		return result{}, err
	}
	if _, err := s.tx.Exec(ctx, "RELEASE SAVEPOINT matrix"); err != nil {
		return result{}, err
	}
	return res, nil
}

func sameMultiset(a, b []string) (missing, extra int) {
	count := map[string]int{}
	for _, x := range a {
		count[x]++
	}
	for _, x := range b {
		count[x]--
	}
	for _, n := range count {
		if n > 0 {
			missing += n
		} else {
			extra -= n
		}
	}
	return
}

// Run builds the matrix: every relation and function of the public schema
// and the auth helpers against the rules, in the catalog and as the roles.
// Fixtures must already be loaded (LoadFixtures). The pool must connect as
// the schema owner (a superuser in tests) so expected rows can be computed.
func Run(ctx context.Context, pool *pgxpool.Pool, r *Rules) (*Matrix, error) {
	m := &Matrix{}
	current, err := AppliedVersion(ctx, pool)
	if err != nil {
		return nil, err
	}
	rels, err := Relations(ctx, pool, "public")
	if err != nil {
		return nil, err
	}
	funcs, err := Functions(ctx, pool, []string{"public", "auth"})
	if err != nil {
		return nil, err
	}

	sessions := map[string]*session{}
	for _, p := range Personas {
		s, err := openSession(ctx, pool, p)
		if err != nil {
			return nil, err
		}
		defer s.close(ctx)
		sessions[p.Name] = s
	}
	probes := r.Probes()

	// Relations.
	seenTables := map[string]bool{}
	for _, rel := range rels {
		if rel.Kind == "S" {
			for _, role := range []string{"anon", "authenticated"} {
				privs, err := TablePrivileges(ctx, pool, role, rel.OID, rel.Kind)
				if err != nil {
					return nil, err
				}
				m.add(rel.Name, role, "sequence grants", "-", joinOrDash(privs))
			}
			continue
		}
		m.Tables++
		seenTables[rel.Name] = true
		rule, _, ok := r.Table(rel.Name)
		if !ok {
			m.add(rel.Name, "*", "rule", "a rule in internal/security/rules.yaml", "none")
			continue
		}
		if rel.IsTable() {
			m.add(rel.Name, "*", "rls enabled", "true", strconv.FormatBool(rel.RLS))
		} else if rel.Kind == "v" {
			exposed := rule.Anon.Has("SELECT") || rule.Authenticated.Has("SELECT")
			m.addOK(rel.Name, "*", "view security_invoker", "true when readable by anon/authenticated",
				strconv.FormatBool(rel.SecurityInvoker), !exposed || rel.SecurityInvoker)
		}
		for _, role := range Roles {
			privs, err := TablePrivileges(ctx, pool, role, rel.OID, rel.Kind)
			if err != nil {
				return nil, err
			}
			want := rule.For(role).Grants
			got := privs
			if role == "service_role" {
				// Only DML matters for the service role.
				got = nil
				for _, p := range privs {
					if isDML(p) {
						got = append(got, p)
					}
				}
			}
			m.add(rel.Name, role, "grants", joinOrDash(orderDML(want)), joinOrDash(orderDML(got)))
		}
		if err := m.runTable(ctx, pool, sessions, rel, rule, probes); err != nil {
			return nil, fmt.Errorf("%s: %w", rel.Name, err)
		}
	}

	// Functions.
	seenFuncs := map[string]bool{}
	for _, f := range funcs {
		m.Functions++
		seenFuncs[f.Signature] = true
		seenFuncs[f.Name] = true
		rule, _, ok := r.Function(f.Signature)
		if !ok {
			m.add(f.Signature, "*", "rule", "a rule in internal/security/rules.yaml", "none")
			continue
		}
		if f.Definer {
			sp, set := f.SearchPath()
			if !set {
				sp = "(not set)"
			}
			m.addOK(f.Signature, "*", "definer search_path", `""`, sp, f.EmptySearchPath())
		}
		m.add(f.Signature, "PUBLIC", "grant execute", strconv.FormatBool(rule.Public), strconv.FormatBool(f.PublicExecute))
		for _, role := range Roles {
			m.add(f.Signature, role, "grant execute", strconv.FormatBool(rule.Allows(role)), strconv.FormatBool(f.Execute[role]))
		}
		call := f.CallSQL()
		if call == "" {
			continue
		}
		for _, p := range Personas {
			res, err := sessions[p.Name].try(ctx, call)
			if err != nil {
				return nil, fmt.Errorf("%s as %s: %w", f.Signature, p.Name, err)
			}
			want := "denied"
			if rule.Allows(p.Role) {
				want = "allowed"
			}
			got := "allowed"
			if res.privDenied() {
				got = "denied"
			}
			m.add(f.Signature, p.Name, "execute", want, got)
		}
	}

	// Rules whose object is gone although its migration is applied.
	for name, mig := range r.TableNames() {
		if mig <= current && !seenTables[name] {
			m.add(name, "*", "object exists", "true (rule for migration "+strconv.FormatInt(mig, 10)+")", "false")
		}
	}
	for key, mig := range r.FunctionKeys() {
		if mig <= current && !seenFuncs[key] {
			m.add(key, "*", "object exists", "true (rule for migration "+strconv.FormatInt(mig, 10)+")", "false")
		}
	}

	// Probes.
	for _, pr := range probes {
		if pr.Migration > current {
			continue
		}
		m.Probes++
		p, _ := PersonaByName(pr.As)
		setup := ""
		if pr.Setup != "" {
			setup = Expand(pr.Setup, p)
		}
		res, err := sessions[p.Name].trySetup(ctx, setup, Expand(pr.SQL, p))
		if err != nil {
			return nil, fmt.Errorf("probe %q: %w", pr.Name, err)
		}
		want, got := probeOutcome(pr.Probe, res)
		shown := got
		if want != got && res.Code != "" && res.Msg != "" {
			// The message explains a wrong outcome; it is not compared.
			shown += " (" + res.Msg + ")"
		}
		m.addOK("probe: "+pr.Name, p.Name, "probe", want, shown, want == got)
	}
	return m, nil
}

// probeOutcome renders what a probe wants and what it got in the same
// terms: "ok" (with value/rows when asked), "denied" for 42501, or the bare
// SQLSTATE when the probe wants one.
func probeOutcome(pr Probe, res result) (want, got string) {
	want = pr.Want
	switch {
	case res.Code == "":
		got = "ok"
	case pr.Want == "denied" && res.denied():
		got = "denied"
	case pr.Want == "denied" || pr.Want == "ok":
		got = res.String()
		if !res.denied() {
			got = res.Code
		}
	default:
		got = res.Code
	}
	if pr.Want == "ok" && res.Code == "" {
		if pr.Value != nil {
			want = "value " + *pr.Value
			got = "value (none)"
			if len(res.Values) > 0 {
				got = "value " + res.Values[0]
			}
		}
		if pr.Rows != nil {
			want += fmt.Sprintf(" rows %d", *pr.Rows)
			got += fmt.Sprintf(" rows %d", res.Rows)
		}
	}
	return want, got
}

func joinOrDash(s []string) string {
	if len(s) == 0 {
		return "-"
	}
	return strings.Join(s, ",")
}

func orderDML(s []string) []string {
	rank := map[string]int{"SELECT": 0, "INSERT": 1, "UPDATE": 2, "DELETE": 3}
	out := append([]string(nil), s...)
	sort.SliceStable(out, func(i, j int) bool {
		ri, ok := rank[out[i]]
		if !ok {
			ri = 10
		}
		rj, ok := rank[out[j]]
		if !ok {
			rj = 10
		}
		if ri != rj {
			return ri < rj
		}
		return out[i] < out[j]
	})
	return out
}

// updateColumn picks a column to "update to itself": the first primary key
// column, else the first ordinary one.
func updateColumn(ctx context.Context, pool *pgxpool.Pool, oid uint32) (string, error) {
	var col string
	err := pool.QueryRow(ctx, `
SELECT a.attname FROM pg_catalog.pg_attribute a
WHERE a.attrelid = $1::oid AND a.attnum > 0 AND NOT a.attisdropped AND a.attidentity <> 'a' AND a.attgenerated = ''
ORDER BY a.attnum = ANY (coalesce((SELECT c.conkey FROM pg_catalog.pg_constraint c WHERE c.conrelid = $1::oid AND c.contype = 'p'), '{}')) DESC,
         a.attnum
LIMIT 1`, oid).Scan(&col)
	return col, err
}

// rowKey is the text expression (over the alias t) that identifies a row:
// its primary key, else the whole row.
func rowKey(ctx context.Context, pool *pgxpool.Pool, oid uint32) (string, error) {
	rows, err := pool.Query(ctx, `
SELECT a.attname FROM pg_catalog.pg_constraint c
CROSS JOIN LATERAL unnest(c.conkey) WITH ORDINALITY AS k(attnum, n)
JOIN pg_catalog.pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = k.attnum
WHERE c.conrelid = $1::oid AND c.contype = 'p'
ORDER BY k.n`, oid)
	if err != nil {
		return "", err
	}
	cols, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return "", err
	}
	if len(cols) == 0 {
		return "t::text", nil
	}
	parts := make([]string, len(cols))
	for i, c := range cols {
		parts[i] = "t." + pgx.Identifier{c}.Sanitize()
	}
	if len(parts) == 1 {
		return parts[0] + "::text", nil
	}
	return "ROW(" + strings.Join(parts, ", ") + ")::text", nil
}

// perRow runs an UPDATE/DELETE row by row (each row named by key, from
// every row of the table as the owner sees it) after the whole statement
// failed on a constraint. Values are the rows the persona affected or that
// a constraint stopped (those got past privileges and policies); blocked
// counts the latter. A failure other than a constraint is returned as is.
func (m *Matrix) perRow(ctx context.Context, pool *pgxpool.Pool, s *session, qname, key string, stmt func(where string) string) (result, int, error) {
	rows, err := pool.Query(ctx, `SELECT `+key+` FROM `+qname+` t`)
	if err != nil {
		return result{}, 0, err
	}
	all, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return result{}, 0, err
	}
	var out result
	blocked := 0
	for _, k := range all {
		res, err := s.try(ctx, stmt(` WHERE `+key+` = `+quoteLiteral(k)))
		if err != nil {
			return result{}, 0, err
		}
		switch {
		case res.Code == "":
			out.Values = append(out.Values, res.Values...)
		case strings.HasPrefix(res.Code, "23"):
			out.Values = append(out.Values, k)
			blocked++
		default:
			return res, 0, nil
		}
	}
	out.Rows = int64(len(out.Values))
	return out, blocked, nil
}

func quoteLiteral(s string) string {
	return "'" + strings.ReplaceAll(s, "'", "''") + "'"
}

func (m *Matrix) runTable(ctx context.Context, pool *pgxpool.Pool, sessions map[string]*session, rel Relation, rule TableRule, probes []SectionProbe) error {
	qname := quoteQualified(rel.Name)
	col := ""
	if rel.IsTable() {
		var err error
		if col, err = updateColumn(ctx, pool, rel.OID); err != nil {
			return err
		}
	}
	key := "t::text"
	if rel.IsTable() {
		var err error
		if key, err = rowKey(ctx, pool, rel.OID); err != nil {
			return err
		}
	}
	var total int64
	if err := pool.QueryRow(ctx, `SELECT count(*) FROM `+qname).Scan(&total); err != nil {
		return err
	}
	for _, p := range Personas {
		acc := rule.For(p.Role)
		s := sessions[p.Name]

		// SELECT: exactly the rows the predicate names.
		want := "denied"
		var wantRows []string
		if acc.Has("SELECT") {
			rows, err := pool.Query(ctx, `SELECT t::text FROM `+qname+` t WHERE `+Expand(acc.Predicate("select"), p))
			if err != nil {
				return fmt.Errorf("select rule predicate: %w", err)
			}
			wantRows, err = pgx.CollectRows(rows, pgx.RowTo[string])
			if err != nil {
				return fmt.Errorf("select rule predicate: %w", err)
			}
			want = fmt.Sprintf("%d of %d rows", len(wantRows), total)
		}
		res, err := s.try(ctx, `SELECT t::text FROM `+qname+` t`)
		if err != nil {
			return err
		}
		got := res.String()
		if res.Code == "" {
			miss, extra := sameMultiset(wantRows, res.Values)
			got = fmt.Sprintf("%d of %d rows", len(res.Values), total)
			if miss+extra > 0 {
				got += fmt.Sprintf(" (%d missing, %d extra)", miss, extra)
			}
		}
		m.add(rel.Name, p.Name, "select", want, got)

		if !rel.IsTable() {
			continue
		}
		// UPDATE and DELETE: exactly the rows the predicate names, compared
		// by key (RETURNING) inside the persona's rolled-back transaction.
		for _, action := range []string{"update", "delete"} {
			priv := strings.ToUpper(action)
			want := "denied"
			var wantKeys []string
			if acc.Has(priv) {
				rows, err := pool.Query(ctx, `SELECT `+key+` FROM `+qname+` t WHERE `+Expand(acc.Predicate(action), p))
				if err != nil {
					return fmt.Errorf("%s rule predicate: %w", action, err)
				}
				if wantKeys, err = pgx.CollectRows(rows, pgx.RowTo[string]); err != nil {
					return fmt.Errorf("%s rule predicate: %w", action, err)
				}
				want = fmt.Sprintf("%d of %d rows", len(wantKeys), total)
			}
			stmt := func(where string) string {
				if action == "update" {
					c := pgx.Identifier{col}.Sanitize()
					return `UPDATE ` + qname + ` t SET ` + c + ` = t.` + c + where + ` RETURNING ` + key
				}
				return `DELETE FROM ` + qname + ` t` + where + ` RETURNING ` + key
			}
			res, err := s.try(ctx, stmt(""))
			if err != nil {
				return err
			}
			got := res.String()
			blocked := 0
			if strings.HasPrefix(res.Code, "23") {
				// A constraint (e.g. a foreign key) stopped the statement:
				// find, row by row, which rows the role reaches. A row that
				// fails a constraint got past the privileges and policies.
				res, blocked, err = m.perRow(ctx, pool, s, qname, key, stmt)
				if err != nil {
					return err
				}
				got = res.String()
			}
			if res.Code == "" {
				miss, extra := sameMultiset(wantKeys, res.Values)
				got = fmt.Sprintf("%d of %d rows", len(res.Values), total)
				if miss+extra > 0 {
					got += fmt.Sprintf(" (%d missing, %d extra)", miss, extra)
				}
				if blocked > 0 {
					got += fmt.Sprintf(" (%d stopped by constraints)", blocked)
				}
				m.addOK(rel.Name, p.Name, action, want, got, acc.Has(priv) && miss+extra == 0)
				continue
			}
			if res.Code != "42501" {
				got += " (" + res.Msg + ")"
			}
			m.add(rel.Name, p.Name, action, want, got)
		}
		// INSERT: refused without the privilege; with it, anon and
		// authenticated need probes that show which rows they may add.
		if acc.Has("INSERT") {
			if p.Role == "service_role" {
				continue
			}
			n := 0
			prefix := "insert into " + strings.ToLower(rel.Name)
			for _, pr := range probes {
				if q, _ := PersonaByName(pr.As); q.Role == p.Role &&
					strings.HasPrefix(strings.ToLower(strings.TrimSpace(pr.SQL)), prefix) {
					n++
				}
			}
			m.addOK(rel.Name, p.Name, "insert", "granted, probed", fmt.Sprintf("granted, %d probes", n), n > 0)
			continue
		}
		res, err = s.try(ctx, `INSERT INTO `+qname+` DEFAULT VALUES`)
		if err != nil {
			return err
		}
		m.add(rel.Name, p.Name, "insert", "denied", res.String())
	}
	return nil
}
