package sshd

import (
	"errors"
	"os"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/converge-ci/converge/internal/test/sshtest"
	gossh "golang.org/x/crypto/ssh"
	"golang.org/x/sys/unix"
)

// TestReapOrphans: with the reaper on (as when the agent is PID 1 in a
// container), the processes sessions leave behind are waited for when they
// end instead of staying zombies, while every session's own command, ending
// at the same time, still reports its exit status (the reaper never waits
// for a child os/exec waits for).
func TestReapOrphans(t *testing.T) {
	// Orphans become children of this test process, as they become PID 1's.
	if err := unix.Prctl(unix.PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0); err != nil {
		t.Fatalf("PR_SET_CHILD_SUBREAPER: %v", err)
	}
	t.Cleanup(func() { unix.Prctl(unix.PR_SET_CHILD_SUBREAPER, 0, 0, 0, 0) })
	signer, line := sshtest.NewKey(t, "user")
	a, addr := serveDirect(t, Config{AuthorizedKeys: line})
	var mu sync.Mutex
	reaped := make(map[int]bool)
	more := make(chan struct{}, 1)
	a.children.reaped = func(pid int) {
		mu.Lock()
		reaped[pid] = true
		mu.Unlock()
		select {
		case more <- struct{}{}:
		default:
		}
	}
	t.Cleanup(a.ReapOrphans(t.Context()))

	client, err := gossh.Dial("tcp", addr, &gossh.ClientConfig{
		User: "u", Auth: []gossh.AuthMethod{gossh.PublicKeys(signer)}, HostKeyCallback: gossh.FixedHostKey(a.HostKey()),
	})
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	// Each command leaves a child behind and exits 7; the end of its
	// session hangs the child up, making an orphan to reap while other
	// sessions' commands exit.
	const sessions = 8
	orphans := make(chan int, sessions)
	var wg sync.WaitGroup
	for range sessions {
		wg.Go(func() {
			s, err := client.NewSession()
			if err != nil {
				t.Error(err)
				return
			}
			defer s.Close()
			out, err := s.Output("sleep 30 & echo $!; exit 7")
			var ee *gossh.ExitError
			if !errors.As(err, &ee) || ee.ExitStatus() != 7 {
				t.Errorf("command exiting 7: error %v, want exit status 7", err)
			}
			pid, perr := strconv.Atoi(strings.TrimSpace(string(out)))
			if perr != nil {
				t.Errorf("command printed %q, want the pid of its background child", out)
				return
			}
			orphans <- pid
		})
	}
	wg.Wait()
	close(orphans)

	deadline := time.NewTimer(10 * time.Second)
	defer deadline.Stop()
	for pid := range orphans {
		for {
			mu.Lock()
			ok := reaped[pid]
			mu.Unlock()
			if ok {
				break
			}
			select {
			case <-more:
				continue
			case <-deadline.C:
				stat, _ := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
				t.Fatalf("orphan %d was not reaped within 10 s; /proc/%d/stat: %q", pid, pid, stat)
			}
		}
	}
}
