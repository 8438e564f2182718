package sshd

import "golang.org/x/sys/unix"

// szomb is p_stat of a zombie (sys/proc.h).
const szomb = 5

// sessionProcesses lists the live processes whose session ID is sid: every
// process from sysctl kern.proc.all but zombies, asked for its session
// with getsid, and whether each ignores SIGHUP (p_sigignore).
func sessionProcesses(sid int) []sessionProc {
	all, err := unix.SysctlKinfoProcSlice("kern.proc.all")
	if err != nil {
		return nil
	}
	var procs []sessionProc
	for _, p := range all {
		pid := int(p.Proc.P_pid)
		if pid <= 0 || p.Proc.P_stat == szomb {
			continue
		}
		if s, err := unix.Getsid(pid); err == nil && s == sid {
			ignores := p.Proc.P_sigignore&(1<<(unix.SIGHUP-1)) != 0
			procs = append(procs, sessionProc{pid: pid, ignoresHUP: ignores})
		}
	}
	return procs
}
