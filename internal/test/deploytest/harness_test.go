package deploytest

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/converge-ci/converge/internal/test/testlog"
	"github.com/converge-ci/converge/server"
)

var (
	// repoRoot is the repository's absolute path.
	repoRoot string
	// binDir holds the commands built once for the whole package.
	binDir string
)

func TestMain(m *testing.M) {
	root, err := filepath.Abs("../../..")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	repoRoot = root
	dir, err := os.MkdirTemp("", "converge-deploytest-bin")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	cmd := exec.Command("go", "build", "-o", dir+"/", "../../../cmd/converge", "../../../cmd/agent", "../../../cmd/wsproxy")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		fmt.Fprintf(os.Stderr, "build commands: %v\n%s", err, out)
		os.Exit(1)
	}
	binDir = dir
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// bin is the path of a built command.
func bin(name string) string { return filepath.Join(binDir, name) }

// hostAgent is the name under /static/dist/ of the agent built for this
// machine, as `make dist` names it.
var hostAgent = "agent-" + runtime.GOOS + "-" + runtime.GOARCH

// relay is a running server.
type relay struct {
	HTTP string // http://127.0.0.1:PORT
	User string
}

// startServer runs a server on 127.0.0.1:0 until the test ends, serving
// the files in dist (nil: none) as its downloads, as `make dist` would
// embed them.
func startServer(t *testing.T, dist map[string][]byte) *relay {
	t.Helper()
	dir := t.TempDir()
	for name, b := range dist {
		if err := os.WriteFile(filepath.Join(dir, name), b, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	cfg := server.Config{Listener: ln, SSHUser: "ciuser", Dist: os.DirFS(dir), Logger: testlog.New(t).With("side", "server")}
	srv, err := server.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("server: %v", err)
		}
	})
	return &relay{HTTP: "http://" + ln.Addr().String(), User: cfg.SSHUser}
}

// agentDist is a dist tree holding the real agent for this machine.
func agentDist(t *testing.T) map[string][]byte {
	t.Helper()
	b, err := os.ReadFile(bin("agent"))
	if err != nil {
		t.Fatal(err)
	}
	return map[string][]byte{hostAgent: b}
}

// keysServer serves authorized_keys lines per user as GitHub and GitLab
// do at /USER.keys, on 127.0.0.1 (the agent fetches plain http only from
// loopback hosts). It returns its URL.
func keysServer(t *testing.T, keys map[string]string) string {
	t.Helper()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		user, ok := strings.CutSuffix(strings.TrimPrefix(r.URL.Path, "/"), ".keys")
		if k, found := keys[user]; ok && found {
			fmt.Fprintln(w, k)
			return
		}
		http.NotFound(w, r)
	}))
	t.Cleanup(srv.Close)
	return srv.URL
}

// waitFor polls cond until it holds, failing the test after 30 s.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// proc is a program running in the background of a test.
type proc struct {
	cmd  *exec.Cmd
	out  *syncBuffer // stdout and stderr
	done chan struct{}
	err  error // once done
}

// start runs cmd in the background, collecting its output; the test's
// end kills it if it still runs.
func start(t *testing.T, cmd *exec.Cmd) *proc {
	t.Helper()
	p := &proc{cmd: cmd, out: &syncBuffer{}, done: make(chan struct{})}
	if cmd.Stdout == nil {
		cmd.Stdout = p.out
	}
	cmd.Stderr = p.out
	if err := cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", cmd.Path, err)
	}
	go func() { p.err = cmd.Wait(); close(p.done) }()
	t.Cleanup(func() {
		select {
		case <-p.done:
		default:
			cmd.Process.Kill()
			<-p.done
		}
	})
	return p
}

// wait waits for p to exit, at most a minute, and returns its error.
func (p *proc) wait(t *testing.T) error {
	t.Helper()
	select {
	case <-p.done:
		return p.err
	case <-time.After(time.Minute):
		t.Fatalf("%s did not exit; its output:\n%s", p.cmd.Path, p.out)
		return nil
	}
}

// exited reports whether p has exited.
func (p *proc) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// syncBuffer is a bytes.Buffer safe for concurrent use.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// get fetches url and fails the test unless it answers 200.
func get(t *testing.T, url string) string {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s: %d %v\n%.300s", url, resp.StatusCode, err, b)
	}
	return string(b)
}

// write writes a file, making its directory.
func write(t *testing.T, path string, b []byte) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, b, 0o644); err != nil {
		t.Fatal(err)
	}
}
