package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"strings"
	"testing"

	"github.com/v3ctl/v3ctl/internal/doctor"
	"github.com/v3ctl/v3ctl/internal/testdb"
)

func runDoctorCmd(t *testing.T, args ...string) (int, string, string) {
	t.Helper()
	var out, errOut bytes.Buffer
	code := Execute(context.Background(), NewApp(strings.NewReader(""), &out, &errOut), args)
	return code, out.String(), errOut.String()
}

func TestDoctorCommand(t *testing.T) {
	u := testdb.NewURL(t)
	pool := testdb.Pool(t, u)

	code, out, errOut := runDoctorCmd(t, "--database-url", u, "doctor", "-o", "json")
	if code != ExitOK {
		t.Fatalf("fresh database: exit %d\n%s\n%s", code, out, errOut)
	}
	var fs []doctor.Finding
	if err := json.Unmarshal([]byte(out), &fs); err != nil {
		t.Fatalf("json output: %v\n%s", err, out)
	}
	if len(fs) < len(doctor.CheckNames())-1 {
		t.Fatalf("only %d findings", len(fs))
	}
	for _, f := range fs {
		if f.Check == "" || f.Severity == "" || f.Message == "" {
			t.Fatalf("incomplete finding %+v", f)
		}
	}

	// A warning: exit 6.
	if _, err := pool.Exec(context.Background(), `CREATE POLICY planted ON public.shell_files FOR SELECT TO authenticated USING (uploaded_by = auth.uid())`); err != nil {
		t.Fatal(err)
	}
	code, out, _ = runDoctorCmd(t, "--database-url", u, "doctor")
	if code != ExitDoctorWarn || !strings.Contains(out, "policy_per_row_auth") {
		t.Fatalf("per-row policy: exit %d, want %d\n%s", code, ExitDoctorWarn, out)
	}

	// A critical problem: exit 7, only the checks asked for.
	if _, err := pool.Exec(context.Background(), `GRANT EXECUTE ON FUNCTION public.log_audit_event(text, text, text, jsonb, jsonb, text, text, uuid, text, uuid, text) TO anon`); err != nil {
		t.Fatal(err)
	}
	code, out, _ = runDoctorCmd(t, "--database-url", u, "doctor", "--check", "function_privileges", "-o", "json")
	if code != ExitDoctorCritical {
		t.Fatalf("granted function: exit %d, want %d\n%s", code, ExitDoctorCritical, out)
	}
	fs = nil
	if err := json.Unmarshal([]byte(out), &fs); err != nil {
		t.Fatal(err)
	}
	if len(fs) != 1 || fs[0].Check != "function_privileges" || fs[0].Severity != doctor.Critical || fs[0].Hint == "" {
		t.Fatalf("findings %+v", fs)
	}

	// A bad check name is a usage error naming the valid ones.
	code, _, errOut = runDoctorCmd(t, "--database-url", u, "doctor", "--check", "nope")
	if code != ExitUsage || !strings.Contains(errOut, "rls_disabled") {
		t.Fatalf("bad --check: exit %d\n%s", code, errOut)
	}
}
