package bench

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"filippo.io/age"

	"github.com/converge-ci/converge/agent"
	"github.com/converge-ci/converge/internal/test/agenttest"
	"github.com/converge-ci/converge/internal/test/sshtest"
)

// startRecordingAgent is startAgent for an agent that records shells to
// a fresh age recipient (issue 22), through the relay only.
func startRecordingAgent(t *testing.T, s *serverProc, id string, c *sshtest.Client) (dir string, relay sshtest.Target) {
	t.Helper()
	dir = t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, ".authorized_keys"), []byte(c.PublicKey+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	x, err := age.GenerateX25519Identity()
	if err != nil {
		t.Fatal(err)
	}
	a := agenttest.Start(t, agent.Config{Server: s.URL(), ID: id, Dir: dir, Out: io.Discard,
		Logger: slog.New(slog.DiscardHandler), RecordTo: x.Recipient().String(), RecordDir: t.TempDir()})
	c.Trust(id, a.HostKey())
	return dir, sshtest.Target{User: s.User, Alias: id, ProxyCommand: bin("wsproxy") + " ws://" + s.Addr + "/client/" + id}
}

// ptyEcho opens an interactive shell (ssh -tt, so it is recorded when
// the agent records) that runs cat, and times n round trips of one
// typed line to its echo by the terminal (what a user sees when typing),
// after a short warm-up; cat then prints the line again, which is read
// before the next.
func (s *session) ptyEcho(n int) ([]time.Duration, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	cmd := s.command(ctx, "ssh", "-tt", s.tgt.Dest())
	in, err := cmd.StdinPipe()
	if err != nil {
		return nil, err
	}
	outPipe, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	defer cmd.Wait()
	defer cmd.Process.Kill()
	out := bufio.NewReader(outPipe)
	io.WriteString(in, "echo RE''ADY; exec cat\n")
	for {
		l, err := out.ReadString('\n')
		if err != nil {
			return nil, fmt.Errorf("pty echo: no READY: %v", err)
		}
		if strings.Contains(l, "READY") && !strings.Contains(l, "''") { // not the typed line's echo
			break
		}
	}
	line := "converge echo 0123456789abcdef"
	var times []time.Duration
	for i := -10; i < n; i++ {
		start := time.Now()
		if _, err := io.WriteString(in, line+"\n"); err != nil {
			return nil, err
		}
		for j := range 2 { // the terminal's echo, then cat's
			got, err := out.ReadString('\n')
			if err != nil || got != line+"\r\n" {
				return nil, fmt.Errorf("pty echo: read %q, %v", got, err)
			}
			if i >= 0 && j == 0 {
				times = append(times, time.Since(start))
			}
		}
	}
	return times, nil
}

// TestBenchRecord compares an agent that records shells with one that
// does not, both through the relay: exec throughput (`ssh cat`, which is
// not recorded) and the echo round trip in an interactive shell (which
// is). Targets of issue 22: throughput unchanged, echo p99 within 1 ms.
func TestBenchRecord(t *testing.T) {
	if !*flagTable {
		t.Skip("the benchmark table runs with -bench-table (make bench-record)")
	}
	tb := &table{header: machine()}
	srv := startServer(t)
	c := sshtest.New(t)
	onDir, on := startRecordingAgent(t, srv, "rec-on", c)
	off := startAgent(t, srv, "rec-off", c)
	_, offT, _ := paths(t, srv, off, "rec-off", 0)
	size := int64(*flagSize) << 20
	writeRandom(t, filepath.Join(onDir, "big.bin"), size)
	writeRandom(t, filepath.Join(off.Dir, "big.bin"), size)
	son, soff := openSession(t, c, on), openSession(t, c, offT)

	s := tb.add("Recording shells (issue 22): an agent with --record-to vs without, through the relay", "recording", "off", "comparison")
	a, b := pair(t, *flagReps, func() (time.Duration, error) { return son.sshCat("big.bin", size) },
		func() (time.Duration, error) { return soff.sshCat("big.bin", size) })
	r := speedRatio(a, b)
	s.add(row{what: fmt.Sprintf("ssh cat %d MiB (exec: not recorded)", size>>20), a: mibps(size, a), b: mibps(size, b),
		comp: fmt.Sprintf("%.2f", r), target: ">= 0.95", verdict: verdict(r >= 0.95)})
	// In ten blocks, alternating which goes first, so that the load of a
	// shared machine falls on both alike.
	n := *flagEcho
	var re, de []time.Duration
	for b := range 10 {
		first, second, fo, so := son, soff, &re, &de
		if b%2 == 1 {
			first, second, fo, so = soff, son, &de, &re
		}
		for _, m := range []struct {
			s   *session
			out *[]time.Duration
		}{{first, fo}, {second, so}} {
			ts, err := m.s.ptyEcho(max(n/10, 10))
			if err != nil {
				t.Fatal(err)
			}
			*m.out = append(*m.out, ts...)
		}
	}
	s.add(row{what: fmt.Sprintf("shell echo round trip, median of %d", n), a: ms(median(re)), b: ms(median(de)), comp: diff(median(re) - median(de))})
	rp, dp := percentile(re, 99), percentile(de, 99)
	s.add(row{what: "shell echo round trip, p99", a: ms(rp), b: ms(dp), comp: diff(rp - dp), target: "<= +1 ms", verdict: verdict(rp-dp <= time.Millisecond)})
	t.Logf("ssh cat: recording %s, off %s; echo p99: recording %s, off %s", mibps(size, a), mibps(size, b), ms(rp), ms(dp))
	fmt.Print("\n" + tb.String())
}
