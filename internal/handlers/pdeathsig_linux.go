package handlers

import "syscall"

// setPdeathsig kills the command when the worker dies (SIGKILL included), so
// a killed worker leaves no handler running whose result nobody collects;
// the job is reclaimed and run again.
func setPdeathsig(a *syscall.SysProcAttr) { a.Pdeathsig = syscall.SIGKILL }
