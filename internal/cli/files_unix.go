//go:build unix

package cli

import (
	"fmt"
	"syscall"
)

// RaiseFileLimit raises this process's soft limit on open file
// descriptors (RLIMIT_NOFILE) to its hard limit and returns the soft limit
// in force afterwards. Go programs already do this at start (since Go
// 1.19); calling it says so explicitly and learns the figure. When the
// system refuses (macOS does, for a hard limit it reports as unlimited),
// the limit stays as it was and is returned with the error. Only root can
// raise the hard limit: that is the operator's (systemd LimitNOFILE=,
// ulimit -Hn).
func RaiseFileLimit() (uint64, error) {
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		return 0, fmt.Errorf("read the file descriptor limit: %w", err)
	}
	if lim.Cur >= lim.Max {
		return uint64(lim.Cur), nil
	}
	raised := lim
	raised.Cur = lim.Max
	if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &raised); err != nil {
		return uint64(lim.Cur), fmt.Errorf("raise the file descriptor limit from %d to %d: %w", lim.Cur, lim.Max, err)
	}
	return uint64(raised.Cur), nil
}
