package bench

import (
	"fmt"
	"os/exec"
	"testing"
	"time"
)

// maxStepOverhead is the target of the `agent run` row (issue 21): a
// step whose command passes costs at most this much more through the
// agent than run directly.
const maxStepOverhead = 20 * time.Millisecond

// stepOverhead adds the row of `agent run -- true` against `true`: the
// whole process, start to exit, the agent's start-up included, on the
// success path, where it makes no connection (srv is the server it would
// register with on a failure).
func stepOverhead(t *testing.T, tb *table, reps int, srv *serverProc) {
	truth, err := exec.LookPath("true")
	if err != nil {
		t.Fatal(err)
	}
	timed := func(name string, args ...string) func() (time.Duration, error) {
		return func() (time.Duration, error) {
			cmd := exec.Command(name, args...)
			start := time.Now()
			err := cmd.Run()
			return time.Since(start), err
		}
	}
	reps = max(reps, 21) // a few milliseconds each: enough runs for a steady median
	a, b := pair(t, reps, timed(bin("agent"), "run", "ws://"+srv.Addr, "--", truth), timed(truth))
	s := tb.add("agent run: a passing step through the agent vs the command alone (whole process, start to exit)", "agent run", "direct", "difference")
	s.add(row{what: "`agent run URL -- true` vs `true`", a: ms(a), b: ms(b), comp: diff(a - b),
		target: fmt.Sprintf("<= %+d ms", maxStepOverhead.Milliseconds()), verdict: verdict(a-b <= maxStepOverhead)})
	t.Logf("agent run: %s, direct %s, %s", ms(a), ms(b), diff(a-b))
}

// TestBenchRun prints only the `agent run` row.
func TestBenchRun(t *testing.T) {
	if !*flagTable {
		t.Skip("the benchmark table runs with -bench-table (make bench-run)")
	}
	tb := &table{header: machine()}
	stepOverhead(t, tb, *flagReps, startServer(t))
	fmt.Print("\n" + tb.String())
}
