//go:build windows

package devdb

import (
	"os"
	"os/exec"
	"syscall"
)

// On Windows the server runs as the current user in a new process group.
func setServerProcAttrs(c *exec.Cmd, _ serverUser) {
	c.SysProcAttr = &syscall.SysProcAttr{CreationFlags: syscall.CREATE_NEW_PROCESS_GROUP}
}

// Windows has no flock: two `v3ctl dev` commands racing on one instance are
// not serialised there (the state file still keeps a second `dev up`
// harmless once the first has finished).
func lockFile(*os.File) error { return nil }

func unlockFile(*os.File) {}
