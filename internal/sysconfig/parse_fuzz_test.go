package sysconfig

import (
	"encoding/json"
	"errors"
	"math"
	"strconv"
	"strings"
	"testing"
	"unicode/utf8"
)

// FuzzParseValue: for every kind, a command-line value either becomes JSON of
// that kind (valid JSON, in range, the value the user typed) or is refused
// with an *InvalidValueError — never a panic, never JSON PostgreSQL rejects.
// Run: go test ./internal/sysconfig -run '^$' -fuzz FuzzParseValue -fuzztime 30s
func FuzzParseValue(f *testing.F) {
	for _, s := range []string{"true", "FALSE", " on ", "yes", "0", "1", "2", "", " ", "-1", "1800", "86400", "86401",
		"1e3", "1.5", "0x10", "+5", "NaN", "Inf", "-Inf", "1e309", "9223372036854775808", "hello", "\"quoted\"",
		"\x00", "\xff\xfe", "ü", "\\u0000", "null"} {
		for kind := range 4 {
			f.Add(kind, s)
		}
	}
	lo, hi := 0.0, 86400.0
	f.Fuzz(func(t *testing.T, kindN int, raw string) {
		kinds := []string{"boolean", "integer", "number", "string"}
		if kindN < 0 {
			kindN = -kindN
		}
		e := Entry{Key: "fuzz.key", Kind: kinds[kindN%len(kinds)], Min: &lo, Max: &hi}
		if e.Kind == "string" || e.Kind == "boolean" {
			e.Min, e.Max = nil, nil
		}
		out, err := ParseValue(e, raw)
		if err != nil {
			var ive *InvalidValueError
			if !errors.As(err, &ive) {
				t.Fatalf("%s %q: error is not an InvalidValueError: %v", e.Kind, raw, err)
			}
			if ive.Key != e.Key || !strings.Contains(err.Error(), e.Key) {
				t.Fatalf("%s %q: error does not name the key: %v", e.Kind, raw, err)
			}
			return
		}
		if !json.Valid(out) {
			t.Fatalf("%s %q: produced invalid JSON %q", e.Kind, raw, out)
		}
		var v any
		if err := json.Unmarshal(out, &v); err != nil {
			t.Fatal(err)
		}
		if s, ok := v.(string); ok && strings.ContainsRune(s, 0) {
			t.Fatalf("%s %q: produced a string with NUL, which PostgreSQL's jsonb refuses: %q", e.Kind, raw, out)
		}
		trimmed := strings.TrimSpace(raw)
		switch e.Kind {
		case "boolean":
			b, ok := v.(bool)
			if !ok {
				t.Fatalf("boolean %q gave %s", raw, out)
			}
			want := map[string]bool{"true": true, "on": true, "yes": true, "1": true}[strings.ToLower(trimmed)]
			if b != want {
				t.Fatalf("boolean %q gave %v", raw, b)
			}
		case "integer", "number":
			n, ok := v.(float64)
			if !ok || math.IsNaN(n) || math.IsInf(n, 0) || n < lo || n > hi {
				t.Fatalf("%s %q gave %s, outside [%g, %g]", e.Kind, raw, out, lo, hi)
			}
			if e.Kind == "integer" {
				if want, err := strconv.ParseInt(trimmed, 10, 64); err != nil || float64(want) != n {
					t.Fatalf("integer %q gave %s", raw, out)
				}
			}
		case "string":
			s, ok := v.(string)
			if !ok || s != raw {
				t.Fatalf("string %q gave %s (not the same string)", raw, out)
			}
			if !utf8.ValidString(raw) {
				t.Fatalf("string %q is not UTF-8 but was accepted", raw)
			}
		}
	})
}
