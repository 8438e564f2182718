package bench

import (
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"
)

var (
	flagTable      = flag.Bool("bench-table", false, "run the full benchmark table (make bench); without it TestBenchTable skips")
	flagBin        = flag.String("bench-bin", "", "directory holding the converge and wsproxy binaries to measure (make bench passes bin/); default: build them")
	flagSize       = flag.Int("bench-size", 256, "size of the transferred file in MiB")
	flagReps       = flag.Int("bench-reps", 3, "runs of each throughput measurement; the table shows the median")
	flagEcho       = flag.Int("bench-echo", 1000, "echo round trips per path at 0 ms (fewer at the added round trip)")
	flagRTT        = flag.Duration("bench-rtt", 50*time.Millisecond, "added round trip of the second table (0 skips it)")
	flagAgents     = flag.Int("bench-agents", 10000, "synthetic agents (internal/test/loadgen) for the server memory, lookup and restart rows (0 skips them); needs a file descriptor limit above it (ulimit -n)")
	flagOutage     = flag.Duration("bench-outage", 5*time.Second, "how long the server stays down in the second restart of the many-agents rows")
	flagRealAgents = flag.Int("bench-real-agents", 1000, "real agents for the reference of the memory row (0 skips it)")
	flagCipher     = flag.Bool("bench-ciphers", true, "compare the SSH ciphers")
	flagCluster    = flag.Bool("bench-cluster", true, "measure a stream forwarded between two replicas, and the Redis registry (needs redis-server)")
	flagStreams    = flag.Int("bench-streams", 200, "concurrent streams for the many-streams rows (0 skips them)")
	flagObservers  = flag.Int("bench-observers", 20, "OpenSSH observers attached for the shared-shell memory row (0 skips the shared-shell rows)")
	flagOut        = flag.String("bench-out", "", "also write the table to this file")
)

// binDir holds converge and wsproxy.
var binDir string

func TestMain(m *testing.M) {
	if mode := os.Getenv(clientEnv); mode != "" {
		os.Exit(runClient(mode)) // this binary is a client of the many-agents rows (probe_test.go)
	}
	flag.Parse()
	binDir = *flagBin
	if binDir == "" {
		dir, err := os.MkdirTemp("", "converge-bench-bin")
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		cmd := exec.Command("go", "build", "-o", dir+"/", "../../../cmd/converge", "../../../cmd/wsproxy", "../../../cmd/agent")
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if out, err := cmd.CombinedOutput(); err != nil {
			os.RemoveAll(dir)
			fmt.Fprintf(os.Stderr, "build commands: %v\n%s", err, out)
			os.Exit(1)
		}
		binDir = dir
	}
	for _, b := range []string{"converge", "wsproxy", "agent"} {
		if _, err := os.Stat(filepath.Join(binDir, b)); err != nil {
			fmt.Fprintf(os.Stderr, "%s not found in %s: run make build, or leave -bench-bin empty to build it\n", b, binDir)
			os.Exit(1)
		}
	}
	code := m.Run()
	if *flagBin == "" {
		os.RemoveAll(binDir)
	}
	os.Exit(code)
}

func bin(name string) string { return filepath.Join(binDir, name) }
