package cli

import (
	"bytes"
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"
)

// FuzzParseAge: the duration parser behind --older-than / --since either
// refuses a value or returns a non-negative duration that is never more
// than the sum of its parts allows (no overflow into a negative or tiny
// duration, which would make `jobs purge --older-than` purge everything).
// Run: go test ./internal/cli -run '^$' -fuzz FuzzParseAge -fuzztime 30s
func FuzzParseAge(f *testing.F) {
	for _, s := range []string{"7d", "12h", "30m", "90s", "2w", "1d12h", "1h30m", "0", "", " ", "-1h", "1", "1.5h",
		"500ms", "36500d", "36501d", "36500d36500d", "5200w", "1e3h", "0.0000000001ms", "1d-1h", "h", "1x", "7D", " 7d ", "1d 2h",
		"99999999999999999999d", "1..5h", "NaNh", "Infh"} {
		f.Add(s)
	}
	const hundredYears = 100 * 365 * 24 * time.Hour
	f.Fuzz(func(t *testing.T, s string) {
		d, err := parseAge(s)
		if err != nil {
			if d != 0 {
				t.Fatalf("parseAge(%q) returned %v with error %v", s, d, err)
			}
			return
		}
		if d < 0 {
			t.Fatalf("parseAge(%q) = %v: negative", s, d)
		}
		// The total is capped at 100 years, so it can never overflow.
		if d > hundredYears {
			t.Fatalf("parseAge(%q) = %v: more than 100 years", s, d)
		}
		if strings.TrimSpace(s) != "0" && !durationPart.MatchString(strings.ToLower(strings.TrimSpace(s))) {
			t.Fatalf("parseAge(%q) = %v without any number+unit part", s, d)
		}
	})
}

// FuzzReadPayload: --payload either yields exactly the bytes given, which are
// a non-empty JSON object, or a usage error (exit 2) — never a panic.
// Run: go test ./internal/cli -run '^$' -fuzz FuzzReadPayload -fuzztime 30s
func FuzzReadPayload(f *testing.F) {
	for _, s := range []string{`{"shell_file_id":"x","patient_id":"y"}`, `{}`, `[]`, `null`, `"x"`, `1`, ``, ` {"a":1} `,
		`{"a":1}{"b":2}`, `{"a":1,"a":2}`, `{"a":"\u0000"}`, "{\"a\":\"\xff\"}", `{"a":{"b":[1,2,{"c":null}]}}`, `{"a":1e400}`,
		`{"a":`, `{'a':1}`, "{\"a\":1}\n"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		if s == "-" || strings.HasPrefix(s, "@") {
			return // stdin and files are not what this target is about
		}
		a := NewApp(strings.NewReader(""), &bytes.Buffer{}, &bytes.Buffer{})
		out, err := readPayload(a, s)
		if err != nil {
			var ee *ExitErr
			if !errors.As(err, &ee) || ee.Code != ExitUsage {
				t.Fatalf("readPayload(%q): error is not a usage error: %v", s, err)
			}
			if strings.Contains(err.Error(), s) && len(s) > 20 {
				t.Fatalf("readPayload(%q): error echoes the payload (payloads are health data)", s)
			}
			return
		}
		if string(out) != s {
			t.Fatalf("readPayload(%q) changed the payload to %q", s, out)
		}
		var obj map[string]json.RawMessage
		if err := json.Unmarshal(out, &obj); err != nil || len(obj) == 0 {
			t.Fatalf("readPayload(%q) accepted something that is not a non-empty JSON object", s)
		}
	})
}
