package e2e

import (
	"bytes"
	"context"
	"crypto/rand"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/converge-ci/converge/agent"
	"github.com/converge-ci/converge/internal/test/sshtest"
)

func TestExecExitCodes(t *testing.T) {
	t.Parallel()
	r := startServer(t)
	c := sshtest.New(t)
	a := startAgent(t, r, "exec-job", c)
	tgt := r.target("exec-job")

	res := c.SSH(tgt, 0, "pwd; echo out; echo err >&2; echo $agentdir")
	lines := strings.Split(strings.TrimSpace(res.Stdout), "\n")
	if len(lines) != 3 || lines[0] != a.Dir || lines[1] != "out" || lines[2] != a.Dir {
		t.Errorf("stdout = %q, want pwd, out and agentdir = %s", res.Stdout, a.Dir)
	}
	if strings.TrimSpace(res.Stderr) != "err" {
		t.Errorf("stderr = %q, want err", res.Stderr)
	}
	for _, code := range []int{1, 7, 42} {
		c.SSH(tgt, code, fmt.Sprintf("exit %d", code))
	}
	// stdin streams to the command.
	got := c.Run("ssh", tgt, "hello through stdin\n", tgt.Dest(), "cat")
	if got.Code != 0 || got.Stdout != "hello through stdin\n" {
		t.Errorf("cat of stdin: code %d, stdout %q", got.Code, got.Stdout)
	}
}

func TestSFTPRoundTrip(t *testing.T) {
	t.Parallel()
	r := startServer(t)
	c := sshtest.New(t)
	a := startAgent(t, r, "sftp-job", c)
	tgt := r.target("sftp-job")

	local := filepath.Join(t.TempDir(), "payload.bin")
	data := make([]byte, 32<<20)
	rand.Read(data)
	if err := os.WriteFile(local, data, 0o600); err != nil {
		t.Fatal(err)
	}
	back := filepath.Join(t.TempDir(), "back.bin")
	batch := fmt.Sprintf("put %s up.bin\nget up.bin %s\n", local, back)
	res := c.Run("sftp", tgt, batch, "-b", "-", tgt.Dest())
	if res.Code != 0 {
		t.Fatalf("sftp exit %d: %s%s", res.Code, res.Stdout, res.Stderr)
	}
	up, err := os.ReadFile(filepath.Join(a.Dir, "up.bin"))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(up, data) {
		t.Fatalf("uploaded file differs: %d bytes, want %d", len(up), len(data))
	}
	got, err := os.ReadFile(back)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, data) {
		t.Fatalf("downloaded file differs: %d bytes, want %d", len(got), len(data))
	}
}

func TestSCP(t *testing.T) {
	t.Parallel()
	r := startServer(t)
	c := sshtest.New(t)
	a := startAgent(t, r, "scp-job", c)
	tgt := r.target("scp-job")
	local := filepath.Join(t.TempDir(), "f.txt")
	os.WriteFile(local, []byte("scp payload\n"), 0o600)
	for _, mode := range [][]string{nil, {"-O"}} {
		name := "scp-sftp.txt"
		if mode != nil {
			name = "scp-legacy.txt"
		}
		args := append(append([]string{}, mode...), local, tgt.Dest()+":"+name)
		res := c.Run("scp", tgt, "", args...)
		if res.Code != 0 {
			t.Fatalf("scp %v: exit %d: %s", mode, res.Code, res.Stderr)
		}
		b, err := os.ReadFile(filepath.Join(a.Dir, name))
		if err != nil || string(b) != "scp payload\n" {
			t.Errorf("scp %v: remote file %q, %v", mode, b, err)
		}
	}
}

func TestConcurrentSessions(t *testing.T) {
	t.Parallel()
	r := startServer(t)
	c := sshtest.New(t)
	startAgent(t, r, "busy-job", c)
	tgt := r.target("busy-job")
	var wg sync.WaitGroup
	for i := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			want := fmt.Sprintf("session %d", i)
			res := c.Run("ssh", tgt, "", tgt.Dest(), "sleep 0.3; echo "+want)
			if res.Code != 0 || strings.TrimSpace(res.Stdout) != want {
				t.Errorf("session %d: exit %d, stdout %q, stderr %q", i, res.Code, res.Stdout, res.Stderr)
			}
		}()
	}
	wg.Wait()
}

func TestTCPToWS(t *testing.T) {
	t.Parallel()
	r := startServer(t)
	c := sshtest.New(t)
	startAgent(t, r, "tcp-job", c)

	// Find a free port for tcptows; it is the user-facing command, so it is
	// run as the real binary with a port number.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := ln.Addr().(*net.TCPAddr).Port
	ln.Close()
	ctx, cancel := context.WithCancel(context.Background())
	cmd := exec.CommandContext(ctx, bin("tcptows"), fmt.Sprint(port), r.URL+"/client/tcp-job")
	var logs syncBuffer
	cmd.Stderr = &logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cancel(); cmd.Wait() })
	waitFor(t, "tcptows listening", func() bool { return strings.Contains(logs.String(), "listening") })

	tgt := sshtest.Target{User: r.User, Alias: "tcp-job", Port: port}
	var wg sync.WaitGroup
	for i := range 3 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			res := c.SSH(tgt, 0, fmt.Sprintf("echo tcp %d", i))
			if strings.TrimSpace(res.Stdout) != fmt.Sprintf("tcp %d", i) {
				t.Errorf("stdout %q", res.Stdout)
			}
		}()
	}
	wg.Wait()
	if n := strings.Count(logs.String(), "msg=connected"); n != 3 {
		t.Errorf("tcptows logged %d connections, want 3 (one WebSocket each):\n%s", n, logs.String())
	}
}

func TestUnknownID(t *testing.T) {
	r := startServer(t)
	c := sshtest.New(t)
	// The server refuses before upgrading, with a message naming the ID.
	resp, err := http.Get(r.HTTP + "/client/no-such-job")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusNotFound || !strings.Contains(string(body), `"no-such-job"`) {
		t.Errorf("GET /client/no-such-job: %d %q, want 404 naming the ID", resp.StatusCode, body)
	}
	// wsproxy fails fast, non-zero, naming the ID.
	start := time.Now()
	cmd := exec.Command(bin("wsproxy"), r.URL+"/client/no-such-job")
	cmd.Stdin = strings.NewReader("")
	out, err := cmd.CombinedOutput()
	if err == nil || !strings.Contains(string(out), `"no-such-job"`) {
		t.Errorf("wsproxy: err %v, output %q; want non-zero exit naming the ID", err, out)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("wsproxy took %v to fail", d)
	}
	// And ssh through it fails.
	res := c.Run("ssh", r.target("no-such-job"), "", r.target("no-such-job").Dest(), "true")
	if res.Code == 0 || !strings.Contains(res.Stderr, "no-such-job") {
		t.Errorf("ssh to unknown ID: exit %d, stderr %q", res.Code, res.Stderr)
	}
}

func TestDuplicateID(t *testing.T) {
	t.Parallel()
	r := startServer(t)
	c := sshtest.New(t)
	startAgent(t, r, "dup-job", c)

	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, ".authorized_keys"), []byte(c.PublicKey+"\n"), 0o600)
	second, err := agent.New(agent.Config{Server: r.URL, ID: "dup-job", Dir: dir, Out: io.Discard, Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	err = second.Run(ctx)
	if err == nil || !strings.Contains(err.Error(), `"dup-job" is already used`) {
		t.Fatalf("second agent: %v; want a refusal saying the ID is in use", err)
	}
	// The first agent still serves.
	c.SSH(r.target("dup-job"), 0, "true")
}

func TestBadServerURLs(t *testing.T) {
	t.Parallel()
	for _, args := range [][]string{
		{"http://localhost:1/client/x"},
		{"ws://localhost:1/agent/x"},
		{"ws://localhost:1/client/bad id"},
	} {
		out, err := exec.Command(bin("wsproxy"), args...).CombinedOutput()
		if err == nil || !strings.Contains(string(out), "wsproxy: bad URL") {
			t.Errorf("wsproxy %v: %v %q; want a bad URL error", args, err, out)
		}
	}
}

// TestPlainTextWarning: wsproxy warns when told to use plain ws:// to
// another machine (issue 18, finding 1), and not for this machine. The
// .invalid name fails at once, after the warning.
func TestPlainTextWarning(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		url  string
		warn bool
	}{
		{"ws://converge.invalid/client/x", true},
		{"wss://converge.invalid/client/x", false},
		{"ws://127.0.0.1:1/client/x", false},
	} {
		out, _ := exec.Command(bin("wsproxy"), tc.url).CombinedOutput()
		if got := strings.Contains(string(out), "warning: plain ws://"); got != tc.warn {
			t.Errorf("wsproxy %s: warned %v, want %v:\n%s", tc.url, got, tc.warn, out)
		}
	}
}
