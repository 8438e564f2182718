package bench

import (
	"bytes"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// Clients of the many-agents rows run as this test binary started again
// (see TestMain), so that their requests are not scheduled behind the
// harness's thousands of agent goroutines: what they time is the server.
// The environment says what to do.
const (
	clientEnv     = "CONVERGE_BENCH_CLIENT" // "probe", "lookups" or "fleet"
	clientBaseEnv = "CONVERGE_BENCH_BASE"   // the server, http://HOST:PORT (fleet: ws://)
	clientIDsEnv  = "CONVERGE_BENCH_IDS"    // comma-separated IDs to look up
	clientWantEnv = "CONVERGE_BENCH_WANT"   // lookups: the status every answer must have
	clientTimeEnv = "CONVERGE_BENCH_TIME"   // lookups: for how long
)

// runClient is the client process. It returns the exit code.
func runClient(mode string) int {
	base, ids := os.Getenv(clientBaseEnv), strings.Split(os.Getenv(clientIDsEnv), ",")
	var err error
	switch mode {
	case "probe":
		err = probe(base, ids)
	case "lookups":
		err = lookupLoop(base, ids)
	case "fleet":
		err = runFleet(base)
	default:
		err = fmt.Errorf("unknown client mode %q", mode)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "bench client:", err)
		return 1
	}
	return 0
}

// clientProc starts a client process in mode, with the environment env
// (NAME=value).
func clientProc(t *testing.T, mode string, env ...string) (*exec.Cmd, *bytes.Buffer) {
	t.Helper()
	cmd := exec.Command(os.Args[0])
	cmd.Env = append(append(os.Environ(), clientEnv+"="+mode), env...)
	out := &bytes.Buffer{}
	cmd.Stdout = out
	cmd.Stderr = os.Stderr
	return cmd, out
}

// lookups runs GET /client/ID, for ids in turn, from lookupWorkers
// keep-alive clients in a client process for d, each answer expected to
// be want, and returns the rate.
func lookups(t *testing.T, base string, ids []string, want int, d time.Duration) float64 {
	t.Helper()
	cmd, out := clientProc(t, "lookups", clientBaseEnv+"="+base, clientIDsEnv+"="+strings.Join(ids, ","),
		clientWantEnv+"="+strconv.Itoa(want), clientTimeEnv+"="+d.String())
	if err := cmd.Run(); err != nil {
		t.Fatalf("lookups: %v", err)
	}
	rate, err := strconv.ParseFloat(strings.TrimSpace(out.String()), 64)
	if err != nil {
		t.Fatalf("lookups wrote %q: %v", out.String(), err)
	}
	return rate
}

// lookupLoop is the lookups client: it prints the rate.
func lookupLoop(base string, ids []string) error {
	want, err := strconv.Atoi(os.Getenv(clientWantEnv))
	if err != nil {
		return err
	}
	d, err := time.ParseDuration(os.Getenv(clientTimeEnv))
	if err != nil {
		return err
	}
	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: lookupWorkers}, Timeout: 10 * time.Second}
	var done atomic.Int64
	var wg sync.WaitGroup
	errc := make(chan error, lookupWorkers)
	start := time.Now()
	end := start.Add(d)
	for w := range lookupWorkers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := w; time.Now().Before(end); i += lookupWorkers {
				id := ids[i%len(ids)]
				status, err := get(client, base+"/client/"+id)
				if err == nil && status != want {
					err = fmt.Errorf("GET /client/%s: %d, want %d", id, status, want)
				}
				if err != nil {
					errc <- err
					return
				}
				done.Add(1)
			}
		}()
	}
	wg.Wait()
	select {
	case err := <-errc:
		return err
	default:
	}
	fmt.Printf("%.1f\n", float64(done.Load())/time.Since(start).Seconds())
	return nil
}

// get returns the status of GET url, having read the body.
func get(client *http.Client, url string) (int, error) {
	resp, err := client.Get(url)
	if err != nil {
		return 0, err
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp.StatusCode, nil
}
