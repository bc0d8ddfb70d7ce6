package cli

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestGeneratedFilesFresh fails when docs/reference or completions/ differ
// from what the command tree generates now. Fix: make docs completions.
func TestGeneratedFilesFresh(t *testing.T) {
	for _, kind := range []struct{ name, dir string }{{"markdown", "../../docs/reference"}, {"completions", "../../completions"}} {
		tmp := t.TempDir()
		var out, errb bytes.Buffer
		a := NewApp(strings.NewReader(""), &out, &errb)
		if code := Execute(t.Context(), a, []string{"gen-docs", kind.name, tmp}); code != 0 {
			t.Fatalf("gen-docs %s: exit %d: %s", kind.name, code, errb.String())
		}
		want, _ := filepath.Glob(filepath.Join(tmp, "*"))
		have, _ := filepath.Glob(filepath.Join(kind.dir, "*"))
		if len(want) != len(have) {
			t.Errorf("%s: %d generated files, %d committed; run: make docs completions", kind.dir, len(want), len(have))
			continue
		}
		for _, w := range want {
			gb, _ := os.ReadFile(w)
			hb, err := os.ReadFile(filepath.Join(kind.dir, filepath.Base(w)))
			if err != nil || !bytes.Equal(gb, hb) {
				t.Errorf("%s/%s is stale; run: make docs completions", kind.dir, filepath.Base(w))
			}
		}
	}
}
