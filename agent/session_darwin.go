package agent

import "golang.org/x/sys/unix"

// szomb is p_stat of a zombie (sys/proc.h).
const szomb = 5

// sessionProcesses lists the live processes whose session ID is sid: every
// process from sysctl kern.proc.all but zombies, asked for its session
// with getsid.
func sessionProcesses(sid int) []int {
	procs, err := unix.SysctlKinfoProcSlice("kern.proc.all")
	if err != nil {
		return nil
	}
	var pids []int
	for _, p := range procs {
		pid := int(p.Proc.P_pid)
		if pid <= 0 || p.Proc.P_stat == szomb {
			continue
		}
		if s, err := unix.Getsid(pid); err == nil && s == sid {
			pids = append(pids, pid)
		}
	}
	return pids
}
