//go:build !windows && !linux && !darwin

package sshd

// sessionProcesses cannot list a session's processes here; the caller
// still signals the session leader's process group.
func sessionProcesses(int) []sessionProc { return nil }
