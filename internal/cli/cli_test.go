package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"path/filepath"
	"strings"
	"testing"

	"github.com/v3ctl/v3ctl/internal/testdb"
)

// run executes v3ctl in-process with an isolated config file and returns
// the exit code, stdout and stderr.
func run(t *testing.T, args ...string) (int, string, string) {
	t.Helper()
	return runCfg(t, filepath.Join(t.TempDir(), "config.yaml"), args...)
}

// runCfg is run with a given config file.
func runCfg(t *testing.T, cfg string, args ...string) (int, string, string) {
	t.Helper()
	var out, errb bytes.Buffer
	a := NewApp(strings.NewReader(""), &out, &errb)
	code := Execute(context.Background(), a, append([]string{"--config", cfg}, args...))
	return code, out.String(), errb.String()
}

func TestFlagsSetAndRefuse(t *testing.T) {
	t.Parallel()
	u := testdb.NewURL(t)
	code, _, errs := run(t, "--database-url", u, "--actor", "ops@example.com", "flags", "set", "billing_enabled", "true", "--reason", "launch")
	if code != 0 {
		t.Fatalf("flags set: exit %d: %s", code, errs)
	}
	code, out, _ := run(t, "--database-url", u, "flags", "get", "billing_enabled", "-o", "json")
	var e struct {
		Value json.RawMessage `json:"value"`
	}
	if code != 0 || json.Unmarshal([]byte(out), &e) != nil || string(e.Value) != "true" {
		t.Fatalf("flags get: exit %d out %s", code, out)
	}
	code, out, _ = run(t, "--database-url", u, "flags", "history", "billing_enabled", "-o", "json")
	if code != 0 || !strings.Contains(out, `"actor": "ops@example.com"`) || !strings.Contains(out, `"reason": "launch"`) {
		t.Fatalf("history: exit %d out %s", code, out)
	}
	code, _, errs = run(t, "--database-url", u, "flags", "set", "billing_enabled", "maybe")
	if code != ExitUsage || !strings.Contains(errs, "true or false") {
		t.Fatalf("maybe: exit %d stderr %s", code, errs)
	}
	code, _, errs = run(t, "--database-url", u, "flags", "set", "no_such_flag", "true")
	if code != ExitUsage || !strings.Contains(errs, "billing_enabled") {
		t.Fatalf("unknown flag: exit %d stderr %s", code, errs)
	}
	// Nothing but the first change was audited.
	_, out, _ = run(t, "--database-url", u, "flags", "history", "-o", "json")
	var hs []map[string]any
	if err := json.Unmarshal([]byte(out), &hs); err != nil || len(hs) != 1 {
		t.Fatalf("history after refusals: %v %s", err, out)
	}
	// Dry run: reports, changes nothing.
	code, _, errs = run(t, "--database-url", u, "flags", "unset", "billing_enabled", "--dry-run")
	if code != 0 || !strings.Contains(errs, "dry run") {
		t.Fatalf("dry-run unset: exit %d %s", code, errs)
	}
	_, out, _ = run(t, "--database-url", u, "flags", "get", "billing_enabled")
	if strings.TrimSpace(out) != "true" {
		t.Fatalf("dry run changed the flag: %q", out)
	}
}

func TestSettingsValidation(t *testing.T) {
	t.Parallel()
	u := testdb.NewURL(t)
	for _, bad := range []string{"abc", "0", "1.5", "99999999"} {
		code, _, errs := run(t, "--database-url", u, "settings", "set", "worker.timeout_seconds", bad)
		if code != ExitUsage || !strings.Contains(errs, "worker.timeout_seconds") {
			t.Errorf("timeout %q: exit %d stderr %s", bad, code, errs)
		}
	}
	code, _, errs := run(t, "--database-url", u, "settings", "set", "worker.timeout_seconds", "600", "--reason", "test")
	if code != 0 {
		t.Fatalf("valid set: exit %d %s", code, errs)
	}
	_, out, _ := run(t, "--database-url", u, "settings", "get", "worker.timeout_seconds")
	if strings.TrimSpace(out) != "600" {
		t.Fatalf("get: %q", out)
	}
}

func TestMigrateValidateExitCodes(t *testing.T) {
	t.Parallel()
	u := testdb.NewEmptyURL(t)
	if code, _, errs := run(t, "--database-url", u, "migrate", "validate"); code != ExitPending {
		t.Fatalf("empty database: exit %d, want %d (%s)", code, ExitPending, errs)
	}
	if code, out, _ := run(t, "--database-url", u, "migrate", "up", "--dry-run"); code != 0 || !strings.Contains(out, "CREATE TABLE public.user_profiles") {
		t.Fatalf("dry run: exit %d", code)
	}
	if code, _, _ := run(t, "--database-url", u, "migrate", "validate"); code != ExitPending {
		t.Fatal("dry run applied migrations")
	}
	if code, _, errs := run(t, "--database-url", u, "migrate", "up"); code != 0 {
		t.Fatalf("up: %d %s", code, errs)
	}
	if code, _, errs := run(t, "--database-url", u, "migrate", "validate"); code != 0 {
		t.Fatalf("validate after up: exit %d %s", code, errs)
	}
	// A version this binary does not know: the database is ahead.
	pool := testdb.Pool(t, u)
	if _, err := pool.Exec(context.Background(), `INSERT INTO v3ctl.schema_migrations (version_id, is_applied) VALUES (99999, true)`); err != nil {
		t.Fatal(err)
	}
	if code, _, _ := run(t, "--database-url", u, "migrate", "validate"); code != ExitAhead {
		t.Fatalf("database ahead: exit %d, want %d", code, ExitAhead)
	}
	// Destructive without --yes and without a terminal is refused.
	if code, _, errs := run(t, "--database-url", u, "migrate", "down"); code != ExitUsage || !strings.Contains(errs, "--yes") {
		t.Fatalf("down without --yes: exit %d %s", code, errs)
	}
}

func TestConfigContextsHidePasswords(t *testing.T) {
	t.Parallel()
	cfg := filepath.Join(t.TempDir(), "config.yaml")
	code, _, errs := runCfg(t, cfg, "config", "set-context", "prod", "--database-url", "postgres://admin:s3cret@db.example.com:5432/postgres")
	if code != 0 {
		t.Fatalf("set-context: %d %s", code, errs)
	}
	if strings.Contains(errs, "s3cret") {
		t.Fatalf("password printed: %s", errs)
	}
	code, out, _ := runCfg(t, cfg, "config", "view", "-o", "json")
	if code != 0 || strings.Contains(out, "s3cret") || !strings.Contains(out, "xxxxx") || !strings.Contains(out, `"current_context": "prod"`) {
		t.Fatalf("config view: %d %s", code, out)
	}
	if code, _, _ := runCfg(t, cfg, "config", "use-context", "nope"); code != ExitUsage {
		t.Fatalf("unknown context: exit %d", code)
	}
	// A connection failure through the context does not print the password.
	code, _, errs = runCfg(t, cfg, "--context", "prod", "--database-url", "postgres://admin:s3cret@127.0.0.1:1/x?connect_timeout=1", "flags", "list")
	if code != ExitUnavailable || strings.Contains(errs, "s3cret") {
		t.Fatalf("unreachable: exit %d stderr %s", code, errs)
	}
}

func TestBadOutputFormat(t *testing.T) {
	if code, _, errs := run(t, "version", "-o", "xml"); code != ExitUsage || !strings.Contains(errs, "json") {
		t.Fatalf("exit %d %s", code, errs)
	}
	if code, out, _ := run(t, "version", "-o", "json"); code != 0 || !strings.Contains(out, `"schema_version"`) {
		t.Fatalf("version json: %d %s", code, out)
	}
}
