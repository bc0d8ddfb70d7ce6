package usage

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/big"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/v3ctl/v3ctl/internal/db"
)

// Plan is a subscription plan. A nil limit is unlimited.
type Plan struct {
	Key               string     `json:"plan_key" yaml:"plan_key"`
	DisplayName       string     `json:"display_name" yaml:"display_name"`
	ShellFilesLimit   *int64     `json:"monthly_shell_files_limit" yaml:"monthly_shell_files_limit"`
	PagesLimit        *int64     `json:"monthly_pages_limit" yaml:"monthly_pages_limit"`
	AITokensLimit     *int64     `json:"monthly_ai_tokens_limit" yaml:"monthly_ai_tokens_limit"`
	StorageLimitBytes *int64     `json:"storage_limit_bytes" yaml:"storage_limit_bytes"`
	PriceCents        int64      `json:"price_cents" yaml:"price_cents"`
	Currency          string     `json:"currency" yaml:"currency"`
	TierRank          int        `json:"tier_rank" yaml:"tier_rank"`
	Active            bool       `json:"is_active" yaml:"is_active"`
	RetiredAt         *time.Time `json:"retired_at" yaml:"retired_at"`
	Accounts          int64      `json:"accounts" yaml:"accounts"`
	CreatedAt         time.Time  `json:"created_at" yaml:"created_at"`
	UpdatedAt         time.Time  `json:"updated_at" yaml:"updated_at"`
}

// Price formats the price as a decimal amount with its currency ("9.99 USD").
func (p Plan) Price() string { return FormatCents(p.PriceCents) + " " + p.Currency }

const selectPlans = `SELECT sp.plan_key, sp.display_name, sp.monthly_shell_files_limit::bigint, sp.monthly_pages_limit::bigint,
	sp.monthly_ai_tokens_limit, sp.storage_limit_bytes, sp.price_cents::bigint, sp.currency, sp.tier_rank, sp.is_active,
	sp.retired_at, sp.created_at, sp.updated_at,
	CASE WHEN sp.plan_key = 'free'
	     THEN (SELECT count(*) FROM auth.users u WHERE NOT EXISTS (SELECT 1 FROM public.account_plans ap WHERE ap.account_id = u.id))
	          + (SELECT count(*) FROM public.account_plans ap WHERE ap.plan_key = 'free')
	     ELSE (SELECT count(*) FROM public.account_plans ap WHERE ap.plan_key = sp.plan_key) END
	FROM public.subscription_plans sp`

func scanPlans(rows pgx.Rows) ([]Plan, error) {
	out, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (Plan, error) {
		var p Plan
		return p, r.Scan(&p.Key, &p.DisplayName, &p.ShellFilesLimit, &p.PagesLimit, &p.AITokensLimit, &p.StorageLimitBytes,
			&p.PriceCents, &p.Currency, &p.TierRank, &p.Active, &p.RetiredAt, &p.CreatedAt, &p.UpdatedAt, &p.Accounts)
	})
	if out == nil {
		out = []Plan{}
	}
	return out, explain(err)
}

// ListPlans lists plans by tier; retired ones only with all.
func ListPlans(ctx context.Context, q db.DB, all bool) ([]Plan, error) {
	rows, err := q.Query(ctx, selectPlans+` WHERE $1 OR sp.is_active ORDER BY sp.tier_rank, sp.plan_key`, all)
	if err != nil {
		return nil, explain(err)
	}
	return scanPlans(rows)
}

// GetPlan returns one plan, or a *NotFoundError listing the plans.
func GetPlan(ctx context.Context, q db.DB, key string) (Plan, error) {
	rows, err := q.Query(ctx, selectPlans+` WHERE sp.plan_key = $1`, key)
	if err != nil {
		return Plan{}, explain(err)
	}
	ps, err := scanPlans(rows)
	if err != nil {
		return Plan{}, err
	}
	if len(ps) == 0 {
		return Plan{}, planNotFound(ctx, q, key)
	}
	return ps[0], nil
}

func planNotFound(ctx context.Context, q db.DB, key string) error {
	var keys []string
	rows, err := q.Query(ctx, `SELECT plan_key FROM public.subscription_plans ORDER BY tier_rank, plan_key`)
	if err == nil {
		keys, _ = pgx.CollectRows(rows, pgx.RowTo[string])
	}
	return &NotFoundError{What: "plan", Ref: key, Hint: "plans: " + strings.Join(keys, ", ")}
}

// Limit is an optional limit value for create/update: Set says it was
// given; Unlimited (NULL) or Value.
type Limit struct {
	Set       bool
	Unlimited bool
	Value     int64
}

func (l Limit) json() any {
	if l.Unlimited {
		return nil
	}
	return l.Value
}

// PlanFields are the fields to set on create/update; unset fields are left
// alone (update) or defaulted (create: name from the key, rank above the
// highest, currency USD).
type PlanFields struct {
	DisplayName       *string
	ShellFilesLimit   Limit
	PagesLimit        Limit
	AITokensLimit     Limit
	StorageLimitBytes Limit
	PriceCents        *int64
	Currency          *string
	TierRank          *int
}

// Empty reports whether no field is set.
func (f PlanFields) Empty() bool {
	return f.DisplayName == nil && !f.ShellFilesLimit.Set && !f.PagesLimit.Set && !f.AITokensLimit.Set &&
		!f.StorageLimitBytes.Set && f.PriceCents == nil && f.Currency == nil && f.TierRank == nil
}

func (f PlanFields) object() map[string]any {
	m := map[string]any{}
	if f.DisplayName != nil {
		m["display_name"] = *f.DisplayName
	}
	for name, l := range map[string]Limit{"monthly_shell_files_limit": f.ShellFilesLimit, "monthly_pages_limit": f.PagesLimit,
		"monthly_ai_tokens_limit": f.AITokensLimit, "storage_limit_bytes": f.StorageLimitBytes} {
		if l.Set {
			m[name] = l.json()
		}
	}
	if f.PriceCents != nil {
		m["price_cents"] = *f.PriceCents
	}
	if f.Currency != nil {
		m["currency"] = *f.Currency
	}
	if f.TierRank != nil {
		m["tier_rank"] = *f.TierRank
	}
	return m
}

// PlanChange is the outcome of create/update/retire.
type PlanChange struct {
	Plan     Plan  `json:"plan" yaml:"plan"`
	Old      *Plan `json:"old,omitempty" yaml:"old,omitempty"`
	Changed  bool  `json:"changed" yaml:"changed"`
	Accounts int64 `json:"accounts,omitempty" yaml:"accounts,omitempty"`
	DryRun   bool  `json:"dry_run" yaml:"dry_run"`
}

// inTx runs fn in a transaction that is rolled back when dryRun.
func inTx(ctx context.Context, conn db.TxBeginner, dryRun bool, fn func(pgx.Tx) error) error {
	err := db.InTx(ctx, conn, func(tx pgx.Tx) error {
		if err := fn(tx); err != nil {
			return err
		}
		if dryRun {
			return errDryRun
		}
		return nil
	})
	if errors.Is(err, errDryRun) {
		return nil
	}
	return err
}

func planChange(ctx context.Context, conn db.TxBeginner, dryRun bool, sql string, args ...any) (PlanChange, error) {
	var pc PlanChange
	err := inTx(ctx, conn, dryRun, func(tx pgx.Tx) error {
		var raw []byte
		if err := tx.QueryRow(ctx, sql, args...).Scan(&raw); err != nil {
			return explain(err)
		}
		if err := json.Unmarshal(raw, &pc); err != nil {
			return err
		}
		// Fill the derived account count from the (uncommitted) state.
		rows, err := tx.Query(ctx, selectPlans+` WHERE sp.plan_key = $1`, pc.Plan.Key)
		if err != nil {
			return explain(err)
		}
		ps, err := scanPlans(rows)
		if err != nil {
			return err
		}
		if len(ps) == 1 {
			pc.Plan = ps[0]
		}
		return nil
	})
	pc.DryRun = dryRun
	return pc, err
}

// CreatePlan creates a plan (audited). Limits must be given (a value or
// unlimited) and a price.
func CreatePlan(ctx context.Context, conn db.TxBeginner, key string, f PlanFields, actor, reason string, dryRun bool) (PlanChange, error) {
	b, _ := json.Marshal(f.object())
	return planChange(ctx, conn, dryRun, `SELECT public.upsert_subscription_plan($1, $2::jsonb, true, $3, nullif($4, ''))`,
		key, string(b), actor, reason)
}

// UpdatePlan changes the given fields of a plan (audited); the same values
// again change nothing.
func UpdatePlan(ctx context.Context, conn db.TxBeginner, key string, f PlanFields, actor, reason string, dryRun bool) (PlanChange, error) {
	if _, err := GetPlan(ctx, conn, key); err != nil {
		return PlanChange{}, err
	}
	b, _ := json.Marshal(f.object())
	return planChange(ctx, conn, dryRun, `SELECT public.upsert_subscription_plan($1, $2::jsonb, false, $3, nullif($4, ''))`,
		key, string(b), actor, reason)
}

// RetirePlan stops new assignments of a plan (audited); accounts on it keep it.
func RetirePlan(ctx context.Context, conn db.TxBeginner, key, actor, reason string, dryRun bool) (PlanChange, error) {
	if _, err := GetPlan(ctx, conn, key); err != nil {
		return PlanChange{}, err
	}
	return planChange(ctx, conn, dryRun, `SELECT public.retire_subscription_plan($1, $2, nullif($3, ''))`, key, actor, reason)
}

// Assignment is the outcome of SetPlan.
type Assignment struct {
	AccountID string `json:"account_id" yaml:"account_id"`
	OldPlan   string `json:"old_plan" yaml:"old_plan"`
	NewPlan   string `json:"new_plan" yaml:"new_plan"`
	Change    string `json:"change" yaml:"change"` // plan_upgraded, plan_downgraded or unchanged
	Changed   bool   `json:"changed" yaml:"changed"`
	EventID   int64  `json:"event_id,omitempty" yaml:"event_id,omitempty"`
	DryRun    bool   `json:"dry_run" yaml:"dry_run"`
}

// SetPlan moves an account to a plan (set_account_plan: history row,
// plan_upgraded/plan_downgraded event, audit row).
func SetPlan(ctx context.Context, conn db.TxBeginner, accountID, plan, actor, reason string, dryRun bool) (Assignment, error) {
	if _, err := GetPlan(ctx, conn, plan); err != nil {
		return Assignment{}, err
	}
	var a Assignment
	err := inTx(ctx, conn, dryRun, func(tx pgx.Tx) error {
		var raw []byte
		if err := tx.QueryRow(ctx, `SELECT public.set_account_plan($1::uuid, $2, $3, nullif($4, ''))`,
			accountID, plan, actor, reason).Scan(&raw); err != nil {
			return explain(err)
		}
		return json.Unmarshal(raw, &a)
	})
	a.DryRun = dryRun
	return a, err
}

// PlanHistory is one plan change of an account.
type PlanHistory struct {
	ChangedAt time.Time `json:"changed_at" yaml:"changed_at"`
	AccountID string    `json:"account_id" yaml:"account_id"`
	OldPlan   *string   `json:"old_plan" yaml:"old_plan"`
	NewPlan   string    `json:"new_plan" yaml:"new_plan"`
	Change    string    `json:"change" yaml:"change"`
	ChangedBy *string   `json:"changed_by" yaml:"changed_by"`
	Reason    *string   `json:"reason" yaml:"reason"`
}

// AccountPlanHistory lists an account's plan changes, newest first.
func AccountPlanHistory(ctx context.Context, q db.DB, accountID string) ([]PlanHistory, error) {
	rows, err := q.Query(ctx, `SELECT changed_at, account_id::text, old_plan_key, new_plan_key, change_type, changed_by, reason
		FROM public.account_plan_history WHERE account_id = $1::uuid ORDER BY changed_at DESC, id DESC`, accountID)
	if err != nil {
		return nil, explain(err)
	}
	out, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (PlanHistory, error) {
		var h PlanHistory
		return h, r.Scan(&h.ChangedAt, &h.AccountID, &h.OldPlan, &h.NewPlan, &h.Change, &h.ChangedBy, &h.Reason)
	})
	if out == nil {
		out = []PlanHistory{}
	}
	return out, explain(err)
}

// ---------------------------------------------------------------------------
// Parsing and formatting helpers (exact: no floating point for money/bytes)
// ---------------------------------------------------------------------------

// ParseLimit parses a limit: a non-negative integer (digits, optionally
// with _ or , separators) or "unlimited"/"none"/"null".
func ParseLimit(s string) (Limit, error) {
	v := strings.ToLower(strings.TrimSpace(s))
	switch v {
	case "unlimited", "none", "null":
		return Limit{Set: true, Unlimited: true}, nil
	}
	n, err := parseCount(v)
	if err != nil {
		return Limit{}, fmt.Errorf("invalid limit %q: use a whole number >= 0 or unlimited", s)
	}
	return Limit{Set: true, Value: n}, nil
}

func parseCount(s string) (int64, error) {
	s, ok := stripThousands(s)
	if !ok {
		return 0, errors.New("not a count")
	}
	s = strings.ReplaceAll(s, "_", "")
	if s == "" || strings.HasPrefix(s, "-") || strings.HasPrefix(s, "+") {
		return 0, errors.New("not a count")
	}
	return strconv.ParseInt(s, 10, 64)
}

// stripThousands removes comma thousands separators from a number. Commas
// are only accepted in the integer part, in groups of three digits after a
// first group of one to three ("1,048,576"); anything else ("1,5", "1,0000",
// ",5", "1.5,0") reports false.
func stripThousands(s string) (string, bool) {
	if !strings.Contains(s, ",") {
		return s, true
	}
	whole, frac, hasDot := strings.Cut(s, ".")
	if hasDot && strings.Contains(frac, ",") {
		return "", false
	}
	groups := strings.Split(whole, ",")
	for i, g := range groups {
		if !allDigits(g) || len(g) > 3 || (i > 0 && len(g) != 3) {
			return "", false
		}
	}
	return strings.Join(groups, "") + strings.TrimPrefix(s, whole), true
}

// allDigits reports whether s is a non-empty string of ASCII digits.
func allDigits(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return false
		}
	}
	return true
}

// ParseStorageMB parses a storage limit given in MB (1 MB = 1,048,576
// bytes): a non-negative decimal whose byte value is whole, or unlimited.
// Commas are only thousands separators ("1,000"); "1,5" is refused.
func ParseStorageMB(s string) (Limit, error) {
	l, err := ParseLimit(s)
	if err == nil {
		if !l.Unlimited {
			if l.Value > (1<<63-1)/BytesPerMB {
				return Limit{}, fmt.Errorf("storage %q MB is too large", s)
			}
			l.Value *= BytesPerMB
		}
		return l, nil
	}
	v, ok := stripThousands(strings.TrimSpace(s))
	var r *big.Rat
	if ok {
		r, ok = new(big.Rat).SetString(v)
	}
	if !ok || r.Sign() < 0 {
		return Limit{}, fmt.Errorf("invalid storage %q: use megabytes (1 MB = 1,048,576 bytes) as a number >= 0, or unlimited", s)
	}
	r.Mul(r, big.NewRat(BytesPerMB, 1))
	if !r.IsInt() || !r.Num().IsInt64() {
		return Limit{}, fmt.Errorf("storage %q MB is not a whole number of bytes; use --storage-bytes", s)
	}
	return Limit{Set: true, Value: r.Num().Int64()}, nil
}

// ParsePriceCents parses a price such as 9.99, 29, 0.5 or $9.99 into exact
// cents: digits, optionally a dot and one or two digits; anything else
// (signs, separators, more decimals) is refused.
func ParsePriceCents(s string) (int64, error) {
	v := strings.TrimPrefix(strings.TrimSpace(s), "$")
	bad := fmt.Errorf("invalid price %q: use an amount with at most two decimals, e.g. 9.99", s)
	whole, frac, hasDot := strings.Cut(v, ".")
	if whole == "" && hasDot {
		whole = "0"
	}
	if !allDigits(whole) || (hasDot && (len(frac) > 2 || !allDigits(frac))) {
		return 0, bad
	}
	for len(frac) < 2 {
		frac += "0"
	}
	w, err := strconv.ParseInt(whole, 10, 64)
	if err != nil {
		return 0, bad
	}
	f, err := strconv.ParseInt(frac, 10, 64)
	if err != nil || w > 1<<40 {
		return 0, bad
	}
	return w*100 + f, nil
}

// FormatCents prints cents as a decimal amount (999 -> "9.99").
func FormatCents(c int64) string {
	sign := ""
	if c < 0 {
		sign, c = "-", -c
	}
	return fmt.Sprintf("%s%d.%02d", sign, c/100, c%100)
}

// FormatBytesMB prints bytes in MB with two decimals ("10.49 MB"); whole
// MB without decimals.
func FormatBytesMB(b int64) string {
	if b%BytesPerMB == 0 {
		return fmt.Sprintf("%d MB", b/BytesPerMB)
	}
	return fmt.Sprintf("%.2f MB", float64(b)/BytesPerMB)
}

// FormatCount prints an integer with thousands separators.
func FormatCount(n int64) string {
	s := strconv.FormatInt(n, 10)
	neg := strings.HasPrefix(s, "-")
	if neg {
		s = s[1:]
	}
	var b strings.Builder
	for i, r := range s {
		if i > 0 && (len(s)-i)%3 == 0 {
			b.WriteByte(',')
		}
		b.WriteRune(r)
	}
	if neg {
		return "-" + b.String()
	}
	return b.String()
}
