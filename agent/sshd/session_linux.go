package sshd

import (
	"bytes"
	"os"
	"strconv"
	"syscall"
)

// sessionProcesses lists the live processes whose session ID is sid, from
// /proc/PID/stat (the fourth field after the command name), and whether
// each ignores SIGHUP, from the SigIgn mask in /proc/PID/status.
func sessionProcesses(sid int) []sessionProc {
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return nil
	}
	var procs []sessionProc
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile("/proc/" + e.Name() + "/stat")
		if err != nil {
			continue // gone meanwhile
		}
		if s, ok := statSession(b); ok && s == sid {
			status, _ := os.ReadFile("/proc/" + e.Name() + "/status")
			procs = append(procs, sessionProc{pid: pid, ignoresHUP: ignoresHangup(status)})
		}
	}
	return procs
}

// ignoresHangup reads the "SigIgn:" line of /proc/PID/status, a hex mask
// with bit N-1 set when signal N is ignored.
func ignoresHangup(status []byte) bool {
	for _, line := range bytes.Split(status, []byte("\n")) {
		v, ok := bytes.CutPrefix(line, []byte("SigIgn:"))
		if !ok {
			continue
		}
		mask, err := strconv.ParseUint(string(bytes.TrimSpace(v)), 16, 64)
		return err == nil && mask&(1<<(syscall.SIGHUP-1)) != 0
	}
	return false
}

// statSession reads the session ID from the content of /proc/PID/stat:
// "pid (comm) state ppid pgrp session ...", where comm may hold spaces and
// parentheses, so fields are counted from the last ')'. Zombies (state Z)
// are not reported: they have ended, and waiting for whoever should reap
// them would only delay the session's end.
func statSession(stat []byte) (int, bool) {
	i := bytes.LastIndexByte(stat, ')')
	if i < 0 {
		return 0, false
	}
	f := bytes.Fields(stat[i+1:])
	if len(f) < 4 || string(f[0]) == "Z" {
		return 0, false
	}
	sid, err := strconv.Atoi(string(f[3]))
	return sid, err == nil
}
