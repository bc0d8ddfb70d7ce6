//go:build unix

package devdb

import (
	"os"
	"os/exec"
	"syscall"
)

// setServerProcAttrs runs the server as the unprivileged user when v3ctl
// runs as root, and in its own process group so that it does not die with
// the shell's (Ctrl-C).
func setServerProcAttrs(c *exec.Cmd, su serverUser) {
	c.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if su.root {
		c.SysProcAttr.Credential = &syscall.Credential{Uid: uint32(su.uid), Gid: uint32(su.gid)}
	}
}

func lockFile(f *os.File) error { return syscall.Flock(int(f.Fd()), syscall.LOCK_EX) }

func unlockFile(f *os.File) { _ = syscall.Flock(int(f.Fd()), syscall.LOCK_UN) }
