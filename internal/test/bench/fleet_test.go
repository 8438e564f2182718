package bench

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/converge-ci/converge/internal/test/loadgen"
)

// The synthetic agents run in a client process of their own (see
// clients_test.go) at a lower CPU priority (nice 10), so that on this one
// machine the server and its clients get the CPU they ask for first, as
// they would with the agents on machines of their own. The harness drives
// it with one command a line on its stdin, and it answers each with one
// line of JSON (fleetReply):
//
//	add N   start N more agents and wait until all are connected
//	mark    start counting agents that come back (loadgen.Fleet.Mark)
//	back    wait until every agent is back, and say when each came
//
// Closing stdin stops the agents and ends the process.
const (
	fleetHostsEnv  = "CONVERGE_BENCH_HOSTS"  // source addresses, comma-separated
	fleetTokensEnv = "CONVERGE_BENCH_TOKENS" // a file of identity tokens, one per agent
	fleetPrefix    = "load"                  // of the agents' IDs
)

// fleetReply answers one command.
type fleetReply struct {
	Stats loadgen.Stats
	Mark  time.Time        `json:",omitzero"`  // mark: when
	Back  []loadgen.Return `json:",omitempty"` // back: how each agent came back
	Error string           `json:",omitempty"`
}

// fleetProc is a running fleet process.
type fleetProc struct {
	cmd *exec.Cmd
	in  io.WriteCloser
	out *bufio.Reader
}

// startFleet runs a fleet process with no agents yet against base
// (ws://HOST:PORT), its agents dialling from hosts in turn.
func startFleet(t *testing.T, base string, hosts []netip.Addr, env ...string) *fleetProc {
	t.Helper()
	var hs []string
	for _, h := range hosts {
		hs = append(hs, h.String())
	}
	cmd, _ := clientProc(t, "fleet", append([]string{clientBaseEnv + "=" + base, fleetHostsEnv + "=" + strings.Join(hs, ",")}, env...)...)
	if nice, err := exec.LookPath("nice"); err == nil {
		cmd.Args = append([]string{nice, "-n", "10"}, cmd.Args...)
		cmd.Path = nice
	}
	cmd.Stdout = nil
	f := &fleetProc{cmd: cmd}
	var err error
	if f.in, err = cmd.StdinPipe(); err != nil {
		t.Fatal(err)
	}
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	f.out = bufio.NewReader(out)
	if err := cmd.Start(); err != nil {
		t.Fatalf("start fleet: %v", err)
	}
	t.Cleanup(func() { f.stop(t) })
	return f
}

// do sends one command and reads its reply.
func (f *fleetProc) do(t *testing.T, cmd string) fleetReply {
	t.Helper()
	if _, err := fmt.Fprintln(f.in, cmd); err != nil {
		t.Fatalf("fleet %s: %v", cmd, err)
	}
	line, err := f.out.ReadBytes('\n')
	if err != nil {
		t.Fatalf("fleet %s: %v", cmd, err)
	}
	var r fleetReply
	if err := json.Unmarshal(line, &r); err != nil {
		t.Fatalf("fleet %s: reply %q: %v", cmd, line, err)
	}
	if r.Error != "" {
		t.Fatalf("fleet %s: %s", cmd, r.Error)
	}
	return r
}

// cpu is the fleet process's CPU time so far.
func (f *fleetProc) cpu() time.Duration { return procCPU(f.cmd.Process.Pid) }

// stop ends the fleet process; it does nothing the second time.
func (f *fleetProc) stop(t *testing.T) {
	if f.cmd.ProcessState != nil {
		return
	}
	f.in.Close()
	if err := f.cmd.Wait(); err != nil {
		t.Errorf("fleet: %v", err)
	}
}

// runFleet is the fleet process.
func runFleet(base string) error {
	var hosts []netip.Addr
	if hs := os.Getenv(fleetHostsEnv); hs != "" {
		for _, h := range strings.Split(hs, ",") {
			a, err := netip.ParseAddr(h)
			if err != nil {
				return err
			}
			hosts = append(hosts, a)
		}
	}
	var tokens []string
	if name := os.Getenv(fleetTokensEnv); name != "" {
		b, err := os.ReadFile(name)
		if err != nil {
			return err
		}
		tokens = strings.Fields(string(b))
	}
	f, err := loadgen.Start(loadgen.Config{Server: base, Prefix: fleetPrefix, LocalAddrs: hosts, IDTokens: tokens})
	if err != nil {
		return err
	}
	defer f.Stop()
	in := bufio.NewScanner(os.Stdin)
	enc := json.NewEncoder(os.Stdout)
	for in.Scan() {
		r := fleetCommand(f, in.Text())
		if err := enc.Encode(r); err != nil {
			return err
		}
	}
	return in.Err()
}

// fleetCommand carries out one command.
func fleetCommand(f *loadgen.Fleet, line string) fleetReply {
	ctx, cancel := context.WithTimeout(context.Background(), herdTimeout)
	defer cancel()
	var r fleetReply
	var err error
	switch cmd, arg, _ := strings.Cut(line, " "); cmd {
	case "add":
		var n int
		if n, err = strconv.Atoi(arg); err == nil {
			err = f.Add(n)
		}
		if err == nil {
			r.Stats, err = f.Wait(ctx, func(s loadgen.Stats) bool { return s.Connected == s.Agents || s.GaveUp > 0 })
		}
	case "mark":
		r.Mark = f.Mark()
		r.Stats = f.Stats()
	case "back":
		r.Stats, err = f.Wait(ctx, func(s loadgen.Stats) bool { return s.Back == s.Agents && s.Connected == s.Agents || s.GaveUp > 0 })
		r.Back = f.Back()
	default:
		err = fmt.Errorf("unknown command %q", line)
	}
	if err == nil && r.Stats.GaveUp > 0 {
		err = errors.New(strconv.Itoa(r.Stats.GaveUp) + " agents gave up: " + r.Stats.LastError)
	}
	if err != nil {
		r.Error = err.Error()
	}
	return r
}
