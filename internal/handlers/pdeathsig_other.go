//go:build unix && !linux

package handlers

import "syscall"

func setPdeathsig(*syscall.SysProcAttr) {}
