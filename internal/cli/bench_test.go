package cli

import (
	"encoding/json"
	"strings"
	"testing"

	"github.com/v3ctl/v3ctl/internal/testdb"
)

func TestBenchCommandsJSON(t *testing.T) {
	t.Parallel()
	u := testdb.NewURL(t) // v3ctl_t_*: a throwaway name, allowed without --yes
	code, out, errs := run(t, "--database-url", u, "bench", "queue", "--jobs", "120", "--workers", "3", "-o", "json")
	var d struct {
		Ops       int     `json:"ops"`
		PerSecond float64 `json:"per_second"`
		Mode      string  `json:"mode"`
	}
	if code != 0 || json.Unmarshal([]byte(out), &d) != nil || d.Ops != 120 || d.PerSecond <= 0 || d.Mode == "" {
		t.Fatalf("bench queue: exit %d out %s err %s", code, out, errs)
	}
	code, out, errs = run(t, "--database-url", u, "bench", "pickup", "--samples", "5", "--workers", "2")
	if code != 0 || !strings.Contains(out, "pickup") || !strings.Contains(out, "P50 MS") {
		t.Fatalf("bench pickup: exit %d out %s err %s", code, out, errs)
	}
	code, out, errs = run(t, "--database-url", u, "bench", "claim", "--pending", "500", "--samples", "10", "-o", "json")
	var c []struct {
		Pending int `json:"pending"`
		Latency struct {
			Samples int `json:"samples"`
		} `json:"latency"`
	}
	if code != 0 || json.Unmarshal([]byte(out), &c) != nil || len(c) != 1 || c[0].Pending != 500 || c[0].Latency.Samples != 10 {
		t.Fatalf("bench claim: exit %d out %s err %s", code, out, errs)
	}
	code, out, errs = run(t, "--database-url", u, "bench", "usage", "--events", "50", "--workers", "2", "-o", "json")
	var us struct {
		Recorded int `json:"recorded"`
	}
	if code != 0 || json.Unmarshal([]byte(out), &us) != nil || us.Recorded != 50 {
		t.Fatalf("bench usage: exit %d out %s err %s", code, out, errs)
	}
	code, out, errs = run(t, "--database-url", u, "bench", "capacity", "--callers", "4", "--duration", "300ms", "-o", "json")
	var cp struct {
		Ops int `json:"ops"`
	}
	if code != 0 || json.Unmarshal([]byte(out), &cp) != nil || cp.Ops == 0 {
		t.Fatalf("bench capacity: exit %d out %s err %s", code, out, errs)
	}
}

func TestBenchRefusesOtherDatabases(t *testing.T) {
	t.Parallel()
	// Refused before connecting: the host does not need to exist.
	code, _, errs := run(t, "--database-url", "postgres://app@db.example.invalid:5432/production", "bench", "queue")
	if code != ExitUsage || !strings.Contains(errs, "refusing to benchmark") || !strings.Contains(errs, "--yes") {
		t.Fatalf("exit %d stderr %s", code, errs)
	}
	code, _, errs = run(t, "--database-url", "postgres://app@db.example.invalid:5432/production", "bench", "queue", "--jobs", "0")
	if code != ExitUsage || !strings.Contains(errs, "--jobs") {
		t.Fatalf("--jobs 0: exit %d stderr %s", code, errs)
	}
}
