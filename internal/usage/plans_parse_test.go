package usage_test

import (
	"testing"

	"github.com/v3ctl/v3ctl/internal/usage"
)

func TestParsePriceCents(t *testing.T) {
	for _, c := range []struct {
		in   string
		want int64
		ok   bool
	}{
		{"9.99", 999, true},
		{"29", 2900, true},
		{"0.5", 50, true},
		{".5", 50, true},
		{"$9.99", 999, true},
		{" 19.90 ", 1990, true},
		{"0", 0, true},
		{"1.-5", 0, false},
		{"1.+5", 0, false},
		{"1.5-", 0, false},
		{"1. 5", 0, false},
		{"1.", 0, false},
		{".", 0, false},
		{"", 0, false},
		{"$", 0, false},
		{"-1", 0, false},
		{"+1", 0, false},
		{"$-1.00", 0, false},
		{"1.999", 0, false},
		{"1,000.00", 0, false},
		{"1_000", 0, false},
		{"1.5.0", 0, false},
		{"1e2", 0, false},
		{"abc", 0, false},
	} {
		got, err := usage.ParsePriceCents(c.in)
		if (err == nil) != c.ok || (c.ok && got != c.want) {
			t.Errorf("ParsePriceCents(%q) = %d, %v; want %d ok=%v", c.in, got, err, c.want, c.ok)
		}
	}
}

func TestParseStorageMB(t *testing.T) {
	const mb = usage.BytesPerMB
	for _, c := range []struct {
		in        string
		want      int64
		unlimited bool
		ok        bool
	}{
		{"100", 100 * mb, false, true},
		{"1,000", 1000 * mb, false, true},
		{"1,048,576", 1048576 * mb, false, true},
		{"0.5", mb / 2, false, true},
		{"1,000.5", 1000*mb + mb/2, false, true},
		{"unlimited", 0, true, true},
		{"1,5", 0, false, false},
		{"1,50", 0, false, false},
		{"1,0000", 0, false, false},
		{",500", 0, false, false},
		{"1000,", 0, false, false},
		{"1,,000", 0, false, false},
		{"1.5,0", 0, false, false},
		{"1,5.5", 0, false, false},
		{"-1", 0, false, false},
		{"0.0000001", 0, false, false},
		{"", 0, false, false},
	} {
		got, err := usage.ParseStorageMB(c.in)
		if (err == nil) != c.ok || (c.ok && (got.Value != c.want || got.Unlimited != c.unlimited || !got.Set)) {
			t.Errorf("ParseStorageMB(%q) = %+v, %v; want %d unlimited=%v ok=%v", c.in, got, err, c.want, c.unlimited, c.ok)
		}
	}
	// Counts follow the same comma rule.
	for in, ok := range map[string]bool{"1,500,000": true, "1,5": false, "15,00": false, "1_000": true} {
		if _, err := usage.ParseLimit(in); (err == nil) != ok {
			t.Errorf("ParseLimit(%q): %v, want ok=%v", in, err, ok)
		}
	}
}
