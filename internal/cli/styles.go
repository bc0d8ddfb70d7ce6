package cli

import (
	"github.com/charmbracelet/lipgloss"

	"github.com/v3ctl/v3ctl/internal/output"
)

func stylesOK() lipgloss.Style   { return output.Styles.OK }
func stylesWarn() lipgloss.Style { return output.Styles.Warn }
func stylesErr() lipgloss.Style  { return output.Styles.Err }
