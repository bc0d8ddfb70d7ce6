// Package config reads and writes the v3ctl configuration file
// ($XDG_CONFIG_HOME/v3ctl/config.yaml): named contexts (which database to
// talk to) plus any other settings (worker, handlers...) that viper reads.
package config

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"sort"

	"gopkg.in/yaml.v3"
)

// Context names one database target.
type Context struct {
	DatabaseURL string `yaml:"database-url" json:"database_url"`
	Description string `yaml:"description,omitempty" json:"description,omitempty"`
}

// File is the configuration file. Keys other than contexts and
// current-context are kept as they are when the file is rewritten.
type File struct {
	CurrentContext string             `yaml:"current-context,omitempty"`
	Contexts       map[string]Context `yaml:"contexts,omitempty"`
	Rest           map[string]any     `yaml:",inline"`
}

// DefaultPath is $V3CTL_CONFIG, else $XDG_CONFIG_HOME/v3ctl/config.yaml,
// else ~/.config/v3ctl/config.yaml.
func DefaultPath() string {
	if p := os.Getenv("V3CTL_CONFIG"); p != "" {
		return p
	}
	if d := os.Getenv("XDG_CONFIG_HOME"); d != "" {
		return filepath.Join(d, "v3ctl", "config.yaml")
	}
	home, err := os.UserHomeDir()
	if err != nil {
		return "v3ctl.yaml"
	}
	return filepath.Join(home, ".config", "v3ctl", "config.yaml")
}

// Load reads path; a missing file is an empty configuration.
func Load(path string) (*File, error) {
	f := &File{Contexts: map[string]Context{}}
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return f, nil
	}
	if err != nil {
		return nil, err
	}
	if err := yaml.Unmarshal(b, f); err != nil {
		return nil, fmt.Errorf("parse %s: %w", path, err)
	}
	if f.Contexts == nil {
		f.Contexts = map[string]Context{}
	}
	return f, nil
}

// Save writes the file atomically with owner-only permissions (it may hold
// database passwords).
func (f *File) Save(path string) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return err
	}
	b, err := yaml.Marshal(f)
	if err != nil {
		return err
	}
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, b, 0o600); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}

var contextName = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$`)

// ValidContextName checks a context name.
func ValidContextName(name string) error {
	if !contextName.MatchString(name) {
		return fmt.Errorf("invalid context name %q: use letters, digits, '.', '_' and '-' (at most 63)", name)
	}
	return nil
}

// Names lists the contexts, sorted.
func (f *File) Names() []string {
	out := make([]string, 0, len(f.Contexts))
	for k := range f.Contexts {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}
