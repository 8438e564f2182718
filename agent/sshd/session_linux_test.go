package sshd

import (
	"os"
	"testing"

	"golang.org/x/sys/unix"
)

func TestStatSession(t *testing.T) {
	for _, tc := range []struct {
		stat string
		sid  int
		ok   bool
	}{
		{"1234 (bash) S 1 1234 1234 34816 1234 4194560", 1234, true},
		{"99 (a) b (c)) R 1 2 77 0", 77, true}, // comm with spaces and ')'
		{"99 (short) R 1", 0, false},
		{"1235 (sleep) Z 1 1234 1234 0", 0, false}, // a zombie has ended
		{"garbage", 0, false},
	} {
		sid, ok := statSession([]byte(tc.stat))
		if sid != tc.sid || ok != tc.ok {
			t.Errorf("statSession(%q) = %d, %v; want %d, %v", tc.stat, sid, ok, tc.sid, tc.ok)
		}
	}
	// This process is found in its own session.
	sid, err := unix.Getsid(0)
	if err != nil {
		t.Fatal(err)
	}
	found := false
	for _, p := range sessionProcesses(sid) {
		found = found || p.pid == os.Getpid()
	}
	if !found {
		t.Errorf("sessionProcesses(%d) does not list this process %d", sid, os.Getpid())
	}
}

func TestIgnoresHangup(t *testing.T) {
	for _, tc := range []struct {
		status string
		want   bool
	}{
		{"Name:\tsleep\nSigBlk:\t0000000000000000\nSigIgn:\t0000000000000001\nSigCgt:\t0\n", true}, // nohup
		{"SigIgn:\t0000000000000006\n", false},                                                     // INT and QUIT only
		{"SigIgn:\t0000000000384004\n", false},
		{"Name:\tx\n", false},
	} {
		if got := ignoresHangup([]byte(tc.status)); got != tc.want {
			t.Errorf("ignoresHangup(%q) = %v, want %v", tc.status, got, tc.want)
		}
	}
}
