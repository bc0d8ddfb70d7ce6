package db

import (
	"errors"
	"strings"
	"testing"
)

func TestRedact(t *testing.T) {
	cases := map[string]string{
		"postgres://u:secret@h:5432/db?sslmode=disable": "postgres://u:xxxxx@h:5432/db?sslmode=disable",
		"postgres://u@h/db":                             "postgres://u@h/db",
		"host=h user=u password=secret dbname=d":        "host=h user=u password=xxxxx dbname=d",
		"host=h password='a b' dbname=d":                "host=h password=xxxxx dbname=d",
	}
	for in, want := range cases {
		if got := Redact(in); got != want {
			t.Errorf("Redact(%q) = %q, want %q", in, got, want)
		}
		if strings.Contains(Redact(in), "secret") {
			t.Errorf("password leaked: %q", Redact(in))
		}
	}
}

func TestScrub(t *testing.T) {
	err := scrub(errors.New("failed: secret rejected"), "postgres://u:secret@h/db")
	if strings.Contains(err.Error(), "secret") {
		t.Fatalf("password leaked: %v", err)
	}
}
