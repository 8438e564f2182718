package agent

import (
	"bytes"
	"os"
	"strconv"
)

// sessionProcesses lists the processes whose session ID is sid, from
// /proc/PID/stat (the fourth field after the command name).
func sessionProcesses(sid int) []int {
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return nil
	}
	var pids []int
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
			pids = append(pids, pid)
		}
	}
	return pids
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
