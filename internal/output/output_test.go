package output

import (
	"bytes"
	"strings"
	"testing"
)

type row struct {
	Key   string `json:"key"`
	Value int    `json:"value"`
}

func TestFormats(t *testing.T) {
	var b bytes.Buffer
	p := &Printer{Format: "json", Out: &b}
	if err := p.Print([]row{{"a", 1}}, []string{"KEY", "VALUE"}, [][]string{{"a", "1"}}); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(b.String(), `"key": "a"`) {
		t.Fatalf("json: %s", b.String())
	}
	b.Reset()
	p.Format = "yaml"
	_ = p.Print([]row{{"a", 1}}, nil, nil)
	if b.String() != "- key: a\n  value: 1\n" {
		t.Fatalf("yaml: %q", b.String())
	}
	b.Reset()
	p.Format = "table"
	_ = p.Print(nil, []string{"KEY", "VALUE"}, [][]string{{"a", "1"}})
	if b.String() != "KEY\tVALUE\na\t1\n" {
		t.Fatalf("piped table should be tab-separated: %q", b.String())
	}
	b.Reset()
	p.TTY = true
	_ = p.Print(nil, []string{"KEY", "VALUE"}, [][]string{{"alpha", "1"}})
	lines := strings.Split(strings.TrimRight(b.String(), "\n"), "\n")
	if len(lines) != 2 || strings.Index(lines[0], "VALUE") != strings.Index(lines[1], "1") {
		t.Fatalf("tty table not aligned: %q", b.String())
	}
	b.Reset()
	p.Format = "csv"
	_ = p.Print(nil, []string{"KEY", "VALUE"}, [][]string{{"a,b", "1"}})
	if b.String() != "KEY,VALUE\n\"a,b\",1\n" {
		t.Fatalf("csv: %q", b.String())
	}
}

func TestBar(t *testing.T) {
	if Bar(50, 10) != "█████░░░░░" || Bar(150, 4) != "████" || Bar(0, 2) != "░░" {
		t.Fatal("bar widths wrong")
	}
}
