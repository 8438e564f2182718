package bench

import (
	"bytes"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"
)

// sample is one client request: when it started, how long it took, and
// whether a server answered it.
type sample struct {
	at time.Time
	d  time.Duration
	ok bool
}

// prober is a running probe client.
type prober struct {
	cmd   *exec.Cmd
	stdin io.WriteCloser
	out   *bytes.Buffer
}

// startProbe runs a probe client against base until stop.
func startProbe(t *testing.T, base string, ids []string) *prober {
	t.Helper()
	p := &prober{}
	p.cmd, p.out = clientProc(t, "probe", clientBaseEnv+"="+base, clientIDsEnv+"="+strings.Join(ids, ","))
	var err error
	if p.stdin, err = p.cmd.StdinPipe(); err != nil {
		t.Fatal(err)
	}
	if err := p.cmd.Start(); err != nil {
		t.Fatalf("start probe: %v", err)
	}
	t.Cleanup(func() {
		if p.cmd.ProcessState == nil { // the test failed before stop
			p.stdin.Close()
			p.cmd.Wait()
		}
	})
	return p
}

// stop ends the probe client and returns its samples.
func (p *prober) stop(t *testing.T) []sample {
	t.Helper()
	p.stdin.Close()
	if err := p.cmd.Wait(); err != nil {
		t.Fatalf("probe: %v", err)
	}
	var out []sample
	for line := range strings.Lines(p.out.String()) {
		var at, d int64
		if _, err := fmt.Sscan(line, &at, &d); err != nil {
			t.Fatalf("probe wrote %q: %v", line, err)
		}
		out = append(out, sample{at: time.Unix(0, at), d: time.Duration(d), ok: d >= 0})
	}
	return out
}

// answered returns the times of the requests started in [from, to) that
// a server answered.
func answered(samples []sample, from, to time.Time) []time.Duration {
	var out []time.Duration
	for _, s := range samples {
		if s.ok && !s.at.Before(from) && s.at.Before(to) {
			out = append(out, s.d)
		}
	}
	return out
}

// probe is the probe client: every probeEvery, whether earlier requests
// are done or not, it starts one request on a new connection (as a
// client tool opens one), alternating GET /healthz and GET /client/ID,
// until stdin closes; then it writes each request's start (Unix
// nanoseconds) and duration (nanoseconds, -1 when no server answered) on
// a line.
func probe(base string, ids []string) error {
	stop := make(chan struct{})
	go func() { io.Copy(io.Discard, os.Stdin); close(stop) }()
	client := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}, Timeout: 10 * time.Second}
	tick := time.NewTicker(probeEvery)
	defer tick.Stop()
	var (
		wg    sync.WaitGroup
		mu    sync.Mutex
		lines bytes.Buffer
		bad   error
	)
	for i := 0; ; i++ {
		select {
		case <-tick.C:
		case <-stop:
			wg.Wait()
			if bad != nil {
				return bad
			}
			_, err := os.Stdout.Write(lines.Bytes())
			return err
		}
		url := base + "/healthz"
		if i%2 == 1 {
			url = base + "/client/" + ids[i/2%len(ids)]
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			start := time.Now()
			status, err := get(client, url)
			d := time.Since(start)
			mu.Lock()
			defer mu.Unlock()
			switch {
			case err != nil:
				d = -1 // no server: the restart's downtime
			case status != http.StatusOK && status != http.StatusNotFound && status != http.StatusUpgradeRequired:
				bad = fmt.Errorf("GET %s: %d", url, status)
			}
			fmt.Fprintf(&lines, "%d %d\n", start.UnixNano(), d)
		}()
	}
}
