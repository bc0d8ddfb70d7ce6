package cli

import (
	"errors"
	"fmt"
	"strings"

	"github.com/spf13/cobra"

	"github.com/v3ctl/v3ctl/internal/sysconfig"
)

func init() {
	Register(func(a *App) *cobra.Command { return newConfigKeysCmd(a, true) })
	Register(func(a *App) *cobra.Command { return newConfigKeysCmd(a, false) })
}

// newConfigKeysCmd builds "flags" (features.* booleans) or "settings"
// (every other system_configuration key); both share one implementation.
func newConfigKeysCmd(a *App, flags bool) *cobra.Command {
	noun, what := "settings", "setting"
	short := "List, read and change system settings (validated by type and range, audited)"
	example := `  v3ctl settings list
  v3ctl settings get worker.timeout_seconds
  v3ctl settings set worker.timeout_seconds 900 --reason "shorter AI calls"
  v3ctl settings set system.maintenance_mode true --dry-run`
	if flags {
		noun, what = "flags", "flag"
		short = "List, read and flip feature flags (features.*; JSON booleans, audited)"
		example = `  v3ctl flags list
  v3ctl flags set billing_enabled true --reason "billing launch"
  v3ctl flags unset billing_enabled        # back to its default
  v3ctl flags history billing_enabled -o json`
	}
	cmd := &cobra.Command{Use: noun, Short: short, Example: example}

	resolve := func(c *cobra.Command, name string) (sysconfig.Entry, error) {
		pool, err := a.DB(c.Context())
		if err != nil {
			return sysconfig.Entry{}, err
		}
		e, err := sysconfig.Resolve(c.Context(), pool, name, flags)
		var uke *sysconfig.UnknownKeyError
		if errors.As(err, &uke) {
			return e, UsageErrorf("unknown %s %q; valid %s: %s", what, name, noun, strings.Join(uke.Valid, ", "))
		}
		return e, err
	}
	complete := func(c *cobra.Command, args []string, _ string) ([]string, cobra.ShellCompDirective) {
		if len(args) > 0 {
			if flags {
				return []string{"true", "false"}, cobra.ShellCompDirectiveNoFileComp
			}
			return nil, cobra.ShellCompDirectiveNoFileComp
		}
		pool, err := a.DB(c.Context())
		if err != nil {
			return nil, cobra.ShellCompDirectiveNoFileComp
		}
		es, err := sysconfig.List(c.Context(), pool, flags)
		if err != nil {
			return nil, cobra.ShellCompDirectiveNoFileComp
		}
		var out []string
		for _, e := range es {
			out = append(out, displayKey(e.Key, flags)+"\t"+e.Description)
		}
		return out, cobra.ShellCompDirectiveNoFileComp
	}

	list := &cobra.Command{
		Use:     "list",
		Aliases: []string{"ls"},
		Short:   "List every " + what + " with its value and default",
		Args:    cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			pool, err := a.DB(c.Context())
			if err != nil {
				return err
			}
			es, err := sysconfig.List(c.Context(), pool, flags)
			if err != nil {
				return err
			}
			p := a.Printer()
			rows := make([][]string, 0, len(es))
			for _, e := range es {
				val := e.Display()
				if flags {
					if val == "true" {
						val = p.Paint(stylesOK(), val)
					}
				}
				rows = append(rows, []string{displayKey(e.Key, flags), val, rawString(e.Default), e.Description})
			}
			return p.Print(es, []string{strings.ToUpper(what), "VALUE", "DEFAULT", "DESCRIPTION"}, rows)
		},
	}

	get := &cobra.Command{
		Use:               "get NAME",
		Short:             "Print one " + what + "'s value",
		Args:              cobra.ExactArgs(1),
		ValidArgsFunction: complete,
		RunE: func(c *cobra.Command, args []string) error {
			e, err := resolve(c, args[0])
			if err != nil {
				return err
			}
			p := a.Printer()
			if p.Structured() {
				return p.Print(e, nil, nil)
			}
			fmt.Fprintln(a.Out, e.Display())
			return nil
		},
	}

	var reason string
	var dry bool
	set := func(c *cobra.Command, e sysconfig.Entry, raw string, value []byte) error {
		pool, err := a.DB(c.Context())
		if err != nil {
			return err
		}
		ch, err := sysconfig.Set(c.Context(), pool, e.Key, value, a.Actor(), reason, dry)
		if err != nil {
			return err
		}
		p := a.Printer()
		if p.Structured() {
			return p.Print(ch, nil, nil)
		}
		name := displayKey(e.Key, flags)
		switch {
		case !ch.Changed:
			a.Infof("%s is already %s; nothing changed", name, rawString(ch.NewValue))
		case dry:
			a.Infof("dry run: %s would change from %s to %s; nothing was changed", name, rawString(ch.OldValue), rawString(ch.NewValue))
		default:
			a.Infof("%s: %s -> %s (audited as %s)", name, rawString(ch.OldValue), rawString(ch.NewValue), a.Actor())
			if e.RequiresRestart {
				a.Infof("note: workers must be restarted for this to take effect")
			}
		}
		return nil
	}
	setCmd := &cobra.Command{
		Use:               "set NAME VALUE",
		Short:             "Change a " + what + " (validated; writes an audit row with --actor and --reason)",
		Args:              cobra.ExactArgs(2),
		ValidArgsFunction: complete,
		RunE: func(c *cobra.Command, args []string) error {
			e, err := resolve(c, args[0])
			if err != nil {
				return err
			}
			v, err := sysconfig.ParseValue(e, args[1])
			if err != nil {
				return &ExitErr{Code: ExitUsage, Err: err}
			}
			return set(c, e, args[1], v)
		},
	}
	setCmd.Flags().StringVar(&reason, "reason", "", "why, recorded in the audit log")
	addDryRun(setCmd, &dry)

	history := &cobra.Command{
		Use:               "history [NAME]",
		Short:             "Show audited changes, newest first",
		Args:              cobra.MaximumNArgs(1),
		ValidArgsFunction: complete,
		RunE: func(c *cobra.Command, args []string) error {
			pool, err := a.DB(c.Context())
			if err != nil {
				return err
			}
			key := ""
			if len(args) == 1 {
				e, err := resolve(c, args[0])
				if err != nil {
					return err
				}
				key = e.Key
			}
			limit, _ := c.Flags().GetInt("limit")
			hs, err := sysconfig.History(c.Context(), pool, key, flags, limit)
			if err != nil {
				return err
			}
			if hs == nil {
				hs = []sysconfig.HistoryEntry{}
			}
			rows := make([][]string, 0, len(hs))
			for _, h := range hs {
				at := h.At
				rows = append(rows, []string{fmtTime(&at), displayKey(h.Key, flags), rawString(h.OldValue), rawString(h.NewValue), strPtr(h.Actor), strPtr(h.Reason)})
			}
			return a.Printer().Print(hs, []string{"CHANGED AT", strings.ToUpper(what), "OLD", "NEW", "ACTOR", "REASON"}, rows)
		},
	}
	history.Flags().Int("limit", 50, "at most this many changes")

	cmd.AddCommand(list, get, setCmd, history)

	if flags {
		var ureason string
		var udry bool
		unset := &cobra.Command{
			Use:               "unset NAME",
			Short:             "Return a flag to its default value (audited)",
			Args:              cobra.ExactArgs(1),
			ValidArgsFunction: complete,
			RunE: func(c *cobra.Command, args []string) error {
				e, err := resolve(c, args[0])
				if err != nil {
					return err
				}
				reason, dry = ureason, udry
				return set(c, e, "", e.Default)
			},
		}
		unset.Flags().StringVar(&ureason, "reason", "", "why, recorded in the audit log")
		addDryRun(unset, &udry)
		cmd.AddCommand(unset)
	}
	return cmd
}

func displayKey(key string, flags bool) string {
	if flags {
		return strings.TrimPrefix(key, sysconfig.FlagPrefix)
	}
	return key
}
