package config

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestRoundTripKeepsOtherKeys(t *testing.T) {
	p := filepath.Join(t.TempDir(), "v3ctl", "config.yaml")
	if err := os.MkdirAll(filepath.Dir(p), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, []byte("worker:\n  concurrency: 8\ncontexts:\n  local:\n    database-url: postgres://a@b/c\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	f, err := Load(p)
	if err != nil {
		t.Fatal(err)
	}
	f.Contexts["prod"] = Context{DatabaseURL: "postgres://x:y@z/w"}
	f.CurrentContext = "prod"
	if err := f.Save(p); err != nil {
		t.Fatal(err)
	}
	b, _ := os.ReadFile(p)
	if !strings.Contains(string(b), "concurrency: 8") || !strings.Contains(string(b), "current-context: prod") {
		t.Fatalf("rewritten file lost keys:\n%s", b)
	}
	fi, _ := os.Stat(p)
	if fi.Mode().Perm() != 0o600 {
		t.Fatalf("config file mode %v, want 0600", fi.Mode().Perm())
	}
	if err := ValidContextName("bad name"); err == nil {
		t.Fatal("a name with a space should be refused")
	}
}
