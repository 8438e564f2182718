package e2e

import (
	"errors"
	"net"
	"net/http"
	"net/http/httptest"
	"os/exec"
	"strings"
	"testing"

	"github.com/converge-ci/converge/internal/test/sshtest"
	"github.com/converge-ci/converge/server"
)

// TestFirstRegistrationErrors: at the first registration, errors that
// retrying will not fix (nothing listening, a name that does not resolve,
// a certificate the agent does not trust, a limit the server keeps
// answering 429) end the agent binary with status 1 and "could not reach
// the server", the cause and what to do, not with "connection lost;
// reconnecting" until the connect timeout and then status 0. --detach
// returns as soon as the background agent has given up.
func TestFirstRegistrationErrors(t *testing.T) {
	c := sshtest.New(t)
	closed, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	refusedURL := "ws://" + closed.Addr().String()
	closed.Close() // nothing listens there now: connections are refused
	tlsSrv := httptest.NewTLSServer(http.NotFoundHandler())
	t.Cleanup(tlsSrv.Close)
	limited := startServer(t, func(cfg *server.Config) { cfg.MaxAgentsPerAddr = 1 })
	runAgentBinary(t, limited, keyDir(t, c), nil, "--id", "first-holder")

	for _, tc := range []struct {
		name, url, want string
		args            []string
	}{
		{"refused", refusedURL, "is the server running", nil},
		{"refused, detached", refusedURL, "is the server running", []string{"--detach"}},
		{"no such host", "ws://converge-test.invalid", "check the host name", nil},
		{"untrusted certificate", "wss://" + strings.TrimPrefix(tlsSrv.URL, "https://"), "SSL_CERT_FILE", nil},
		{"429", limited.URL, "--max-agents-per-addr", nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			args := append([]string{"--id", "first-" + strings.ReplaceAll(strings.ReplaceAll(tc.name, " ", "-"), ",", "")}, tc.args...)
			cmd := exec.Command(bin("agent"), append(args, tc.url)...)
			cmd.Dir = keyDir(t, c)
			cmd.Env = append(cleanEnv(), "CONVERGE_CONNECT_TIMEOUT=5s")
			out, err := cmd.CombinedOutput()
			var ee *exec.ExitError
			if !errors.As(err, &ee) || ee.ExitCode() != 1 {
				t.Fatalf("agent exited with %v, want status 1:\n%s", err, out)
			}
			for _, want := range []string{"could not reach the server", tc.want} {
				if !strings.Contains(string(out), want) {
					t.Errorf("the agent's output lacks %q:\n%s", want, out)
				}
			}
			if strings.Contains(string(out), "connection lost") {
				t.Errorf("the agent says a connection was lost that it never had:\n%s", out)
			}
		})
	}
}
