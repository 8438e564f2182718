package deploytest

import (
	"bufio"
	"context"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/converge-ci/converge/internal/splice"
	"github.com/converge-ci/converge/server"
)

// unitFile reads deploy/converge.service as key=value pairs per line,
// comments and sections left out.
func unitFile(t *testing.T) [][2]string {
	t.Helper()
	f, err := os.Open(filepath.Join(repoRoot, "deploy", "converge.service"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var out [][2]string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") || strings.HasPrefix(line, "[") {
			continue
		}
		k, v, ok := strings.Cut(line, "=")
		if !ok {
			t.Fatalf("unit line %q is not key=value", line)
		}
		out = append(out, [2]string{k, v})
	}
	return out
}

// TestSystemdUnit: deploy/converge.service passes systemd-analyze verify
// (when systemd is installed), allows the descriptors the server's
// default limits need, and starts a server that answers /healthz when
// run as its ExecStart with its Environment= settings.
func TestSystemdUnit(t *testing.T) {
	unit := unitFile(t)
	var exec0 []string
	var env []string
	limit := 0
	state := t.TempDir()
	for _, kv := range unit {
		switch kv[0] {
		case "ExecStart":
			exec0 = strings.Fields(kv[1])
		case "Environment":
			env = append(env, strings.ReplaceAll(kv[1], "%S/converge", state))
		case "LimitNOFILE":
			limit, _ = strconv.Atoi(kv[1])
		}
	}
	// What docs/operations.md says the default limits need: an agent, one
	// descriptor and one per pooled stream; a stream, two and the splice's
	// pipes; and some headroom.
	if need := server.DefaultMaxAgents*(1+server.DefaultStreamPool) + (2+splice.ExtraFiles)*server.DefaultMaxStreams + 256; limit < need {
		t.Errorf("LimitNOFILE=%d; the default limits need %d", limit, need)
	}
	if len(exec0) == 0 || exec0[0] != "/usr/local/bin/converge" {
		t.Fatalf("ExecStart = %q, want /usr/local/bin/converge ...", exec0)
	}
	if sa, err := exec.LookPath("systemd-analyze"); err == nil {
		b, _ := os.ReadFile(filepath.Join(repoRoot, "deploy", "converge.service"))
		path := filepath.Join(t.TempDir(), "converge.service")
		os.WriteFile(path, []byte(strings.ReplaceAll(string(b), "/usr/local/bin/converge", bin("converge"))), 0o644)
		if out, err := exec.Command(sa, "verify", path).CombinedOutput(); err != nil {
			t.Errorf("systemd-analyze verify: %v\n%s", err, out)
		}
	}

	ctx, cancel := context.WithCancel(context.Background())
	cmd := exec.CommandContext(ctx, bin("converge"), exec0[1:]...)
	cmd.Cancel = func() error { return cmd.Process.Signal(os.Interrupt) }
	cmd.Env = append(append(os.Environ(), env...), "CONVERGE_ADDR=127.0.0.1:0", "CONVERGE_LOG_FORMAT=text")
	logs := &syncBuffer{}
	cmd.Stderr = logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { cancel(); cmd.Wait() }()
	listening := regexp.MustCompile(`msg=listening .*addr=(\S+)`)
	var addr string
	deadline := time.Now().Add(10 * time.Second)
	for addr == "" {
		if m := listening.FindStringSubmatch(logs.String()); m != nil {
			addr = m[1]
		} else if time.Now().After(deadline) {
			t.Fatalf("the server did not start:\n%s", logs.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
	resp, err := http.Get("http://" + addr + "/healthz")
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("healthz: %v %v\n%s", resp, err, logs.String())
	}
	resp.Body.Close()
	if _, err := os.Stat(filepath.Join(state, "server.key")); err != nil {
		t.Errorf("the server key is not in the unit's state directory: %v", err)
	}
}
