// Package output prints command results as aligned tables (styled only on a
// terminal), tab-separated text when piped, or JSON, YAML and CSV with stable
// field names taken from the values' json tags.
package output

import (
	"bytes"
	"encoding/csv"
	"encoding/json"
	"fmt"
	"io"
	"strings"

	"github.com/charmbracelet/lipgloss"
	"github.com/olekukonko/tablewriter"
	"github.com/olekukonko/tablewriter/renderer"
	"github.com/olekukonko/tablewriter/tw"
	"gopkg.in/yaml.v3"
)

// Formats accepted by -o.
var Formats = []string{"table", "json", "yaml", "csv"}

// ValidFormat reports whether f is one of Formats.
func ValidFormat(f string) bool {
	for _, x := range Formats {
		if f == x {
			return true
		}
	}
	return false
}

// Printer writes results in one format.
type Printer struct {
	Format string
	Out    io.Writer
	// TTY: Out is a terminal, so tables are aligned (and styled if Color).
	TTY   bool
	Color bool
}

// Print writes v as JSON/YAML, or headers+rows as a table or CSV.
func (p *Printer) Print(v any, headers []string, rows [][]string) error {
	switch p.Format {
	case "json":
		return JSON(p.Out, v)
	case "yaml":
		return YAML(p.Out, v)
	case "csv":
		return CSV(p.Out, headers, rows)
	default:
		return p.Table(headers, rows)
	}
}

// Structured reports whether the format is machine-readable.
func (p *Printer) Structured() bool {
	return p.Format == "json" || p.Format == "yaml" || p.Format == "csv"
}

// JSON writes v indented, with a trailing newline.
func JSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	enc.SetEscapeHTML(false)
	return enc.Encode(v)
}

// YAML writes v as YAML using the same field names as JSON (it goes through
// JSON first, keeping key order).
func YAML(w io.Writer, v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	var node yaml.Node
	if err := yaml.Unmarshal(b, &node); err != nil {
		return err
	}
	clearStyle(&node)
	enc := yaml.NewEncoder(w)
	enc.SetIndent(2)
	if err := enc.Encode(&node); err != nil {
		return err
	}
	return enc.Close()
}

// clearStyle turns JSON's flow style into YAML's block style.
func clearStyle(n *yaml.Node) {
	if n.Kind == yaml.MappingNode || n.Kind == yaml.SequenceNode {
		n.Style = 0
	}
	if n.Kind == yaml.ScalarNode && n.Style == yaml.DoubleQuotedStyle {
		n.Style = 0
	}
	for _, c := range n.Content {
		clearStyle(c)
	}
}

// CSV writes headers and rows.
func CSV(w io.Writer, headers []string, rows [][]string) error {
	cw := csv.NewWriter(w)
	if err := cw.Write(headers); err != nil {
		return err
	}
	if err := cw.WriteAll(rows); err != nil {
		return err
	}
	cw.Flush()
	return cw.Error()
}

// Table writes an aligned table on a terminal, tab-separated lines otherwise.
func (p *Printer) Table(headers []string, rows [][]string) error {
	if !p.TTY {
		var b bytes.Buffer
		b.WriteString(strings.Join(headers, "\t") + "\n")
		for _, r := range rows {
			b.WriteString(strings.Join(r, "\t") + "\n")
		}
		_, err := p.Out.Write(b.Bytes())
		return err
	}
	hs := make([]any, len(headers))
	for i, h := range headers {
		if p.Color {
			hs[i] = Styles.Header.Render(h)
		} else {
			hs[i] = h
		}
	}
	t := tablewriter.NewTable(p.Out,
		tablewriter.WithRenderer(renderer.NewBlueprint(tw.Rendition{
			Borders: tw.BorderNone,
			Symbols: tw.NewSymbols(tw.StyleNone),
			Settings: tw.Settings{
				Separators: tw.Separators{BetweenColumns: tw.Off, BetweenRows: tw.Off},
				Lines:      tw.Lines{ShowHeaderLine: tw.Off},
			},
		})),
		tablewriter.WithConfig(tablewriter.Config{
			Header: tw.CellConfig{
				Formatting: tw.CellFormatting{AutoFormat: tw.Off},
				Alignment:  tw.CellAlignment{Global: tw.AlignLeft},
				Padding:    tw.CellPadding{Global: tw.Padding{Left: "", Right: "   "}},
			},
			Row: tw.CellConfig{
				Alignment: tw.CellAlignment{Global: tw.AlignLeft},
				Padding:   tw.CellPadding{Global: tw.Padding{Left: "", Right: "   "}},
			},
		}),
	)
	t.Header(hs...)
	for _, r := range rows {
		if err := t.Append(r); err != nil {
			return err
		}
	}
	return t.Render()
}

// KV prints "key: value" pairs aligned, for single-object views.
func (p *Printer) KV(pairs [][2]string) {
	w := 0
	for _, kv := range pairs {
		if len(kv[0]) > w {
			w = len(kv[0])
		}
	}
	for _, kv := range pairs {
		k := fmt.Sprintf("%-*s", w+1, kv[0]+":")
		if p.Color {
			k = Styles.Key.Render(k)
		}
		fmt.Fprintf(p.Out, "%s %s\n", k, kv[1])
	}
}

// Styles used on a terminal with colour.
var Styles = struct {
	Header, Key, OK, Warn, Err, Dim lipgloss.Style
}{
	Header: lipgloss.NewStyle().Bold(true),
	Key:    lipgloss.NewStyle().Foreground(lipgloss.Color("6")),
	OK:     lipgloss.NewStyle().Foreground(lipgloss.Color("2")),
	Warn:   lipgloss.NewStyle().Foreground(lipgloss.Color("3")),
	Err:    lipgloss.NewStyle().Foreground(lipgloss.Color("1")).Bold(true),
	Dim:    lipgloss.NewStyle().Foreground(lipgloss.Color("8")),
}

// Paint renders s with style when colour is on.
func (p *Printer) Paint(style lipgloss.Style, s string) string {
	if !p.Color {
		return s
	}
	return style.Render(s)
}

// Bar draws a usage bar of width cells for pct (0-100+); over 100 it is full.
func Bar(pct float64, width int) string {
	if width <= 0 {
		width = 20
	}
	if pct < 0 {
		pct = 0
	}
	filled := int(pct / 100 * float64(width))
	if filled > width {
		filled = width
	}
	return strings.Repeat("█", filled) + strings.Repeat("░", width-filled)
}
