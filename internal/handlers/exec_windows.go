//go:build windows

package handlers

import (
	"os/exec"
	"syscall"
)

// setProcAttrs: Windows has no process groups to signal; a timeout kills
// the command itself.
func setProcAttrs(*exec.Cmd) {}

func signalGroup(cmd *exec.Cmd, _ syscall.Signal) error {
	if cmd.Process == nil {
		return nil
	}
	return cmd.Process.Kill()
}
