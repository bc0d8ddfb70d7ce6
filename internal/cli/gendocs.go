package cli

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/spf13/cobra"
	"github.com/spf13/cobra/doc"
)

func init() { Register(newGenDocsCmd) }

// newGenDocsCmd generates the command reference (markdown), man pages and
// shell completions from the command tree. Hidden: it is a build step
// (make docs / make completions / goreleaser), not an operator command.
func newGenDocsCmd(a *App) *cobra.Command {
	cmd := &cobra.Command{
		Use:    "gen-docs markdown|man|completions DIR",
		Short:  "Generate the command reference, man pages or shell completions into DIR",
		Hidden: true,
		Args:   cobra.ExactArgs(2),
		RunE: func(c *cobra.Command, args []string) error {
			root := c.Root()
			dir := args[1]
			if err := os.MkdirAll(dir, 0o755); err != nil {
				return err
			}
			switch args[0] {
			case "markdown":
				return GenMarkdown(root, dir)
			case "man":
				return doc.GenManTree(root, &doc.GenManHeader{Title: "V3CTL", Section: "1", Source: "v3ctl"}, dir)
			case "completions":
				return GenCompletions(root, dir)
			}
			return UsageErrorf("unknown kind %q: use markdown, man or completions", args[0])
		},
	}
	return cmd
}

// GenMarkdown writes one markdown file per command into dir, with stable
// content (no generation date) so a freshness check can compare it.
func GenMarkdown(root *cobra.Command, dir string) error {
	root.DisableAutoGenTag = true
	old, _ := filepath.Glob(filepath.Join(dir, "v3ctl*.md"))
	for _, f := range old {
		_ = os.Remove(f)
	}
	return doc.GenMarkdownTreeCustom(root, dir, func(string) string { return "" }, func(name string) string {
		return strings.ToLower(name)
	})
}

// GenCompletions writes completion scripts for bash, zsh, fish and PowerShell.
func GenCompletions(root *cobra.Command, dir string) error {
	gens := map[string]func(string) error{
		"v3ctl.bash": func(p string) error { return root.GenBashCompletionFileV2(p, true) },
		"v3ctl.zsh":  root.GenZshCompletionFile,
		"v3ctl.fish": func(p string) error { return root.GenFishCompletionFile(p, true) },
		"v3ctl.ps1":  root.GenPowerShellCompletionFileWithDesc,
	}
	for name, gen := range gens {
		if err := gen(filepath.Join(dir, name)); err != nil {
			return fmt.Errorf("%s: %w", name, err)
		}
	}
	return nil
}
