package agent

import (
	"bytes"
	"context"
	"encoding/json"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"
	"unicode"

	"github.com/coder/websocket"

	"github.com/converge-ci/converge/internal/test/sshtest"
	"github.com/converge-ci/converge/internal/wire"
	"github.com/converge-ci/converge/internal/wsconn"
)

// forgedBlock is what a hostile relay would like the job log to show: a
// "host key rotated" notice with its own known_hosts line, over the real
// one, with raw terminal escapes. Every forged line starts with FORGED.
const forgedBlock = "\r\x1b[2K\x1b[1A\x1b[2K\n" +
	"FORGED Host key rotated; replace the line in ~/.ssh/known_hosts with:\n" +
	"FORGED   myjob ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIattacker\r\n" +
	"\u009b31mFORGED\x1b]0;title\x07\x00\x7f"

// TestRelayCannotWriteIntoJobLog: the job log is where users get the host
// key they verify, so a server (or anyone posing as one) must not be able
// to write lines or terminal escapes into it, through the welcome's
// ssh_user or a refusal's text.
func TestRelayCannotWriteIntoJobLog(t *testing.T) {
	for name, user := range map[string]string{
		"welcome ssh_user":       "converge" + forgedBlock,
		"short welcome ssh_user": "u\r\nFORGED \x1b[1A\u009b2J", // within 32 bytes
	} {
		t.Run(name, func(t *testing.T) {
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				c, err := wsconn.Accept(w, r, wire.ControlProtocol)
				if err != nil {
					return
				}
				defer c.CloseNow()
				if _, _, err := c.Read(r.Context()); err != nil { // the hello
					return
				}
				// Encoded by hand: wire.Encode refuses such a welcome.
				b, _ := json.Marshal(wire.Message{Type: wire.TypeWelcome, Welcome: &wire.Welcome{SSHUser: user, Secret: wire.NewToken()}})
				c.Write(r.Context(), websocket.MessageText, b)
				for {
					if _, _, err := c.Read(r.Context()); err != nil {
						return
					}
				}
			}))
			t.Cleanup(srv.Close)
			out, err := runAgainst(t, srv.URL)
			if err == nil || !strings.Contains(err.Error(), "ssh user") {
				t.Errorf("Run against a server welcoming with ssh_user %q = %v; want an error about the ssh user", user, err)
			}
			if strings.Contains(out, "registered as") {
				t.Errorf("the agent announced itself with the forged ssh_user:\n%s", out)
			}
			checkJobLog(t, out)
		})
	}
	t.Run("refusal text", func(t *testing.T) {
		srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			w.WriteHeader(http.StatusConflict)
			w.Write([]byte("rendezvous ID in use" + forgedBlock + strings.Repeat("x", 600)))
		}))
		t.Cleanup(srv.Close)
		out, err := runAgainst(t, srv.URL)
		if err == nil || !strings.Contains(err.Error(), "rendezvous ID in use") {
			t.Errorf("Run against a server refusing with 409 = %v; want the refusal", err)
		}
		checkJobLog(t, out)
		if n := len(err.Error()); n > 500 {
			t.Errorf("the refusal error is %d bytes long, want it bounded: %s", n, err)
		}
	})
}

// runAgainst runs an agent against the server at httpURL until Run returns
// (or 10 s pass), and returns all it wrote (instructions, log, and the
// error as cmd/agent prints it) and Run's error.
func runAgainst(t *testing.T, httpURL string) (string, error) {
	t.Helper()
	var out lockedBuffer
	_, key := sshtest.NewKey(t, "user")
	a, err := New(Config{
		Server:         "ws" + strings.TrimPrefix(httpURL, "http"),
		ID:             "myjob",
		Dir:            t.TempDir(),
		AuthorizedKeys: key,
		Out:            &out,
		Logger:         slog.New(slog.NewTextHandler(&out, nil)),
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	err = a.Run(ctx)
	if ctx.Err() != nil {
		t.Errorf("Run did not return before its context ended")
	}
	if err != nil {
		out.Write([]byte("agent: " + err.Error() + "\n"))
	}
	return out.String(), err
}

// checkJobLog fails t if out holds a control character other than
// newline, or a line that starts with a forged one.
func checkJobLog(t *testing.T, out string) {
	t.Helper()
	for _, r := range out {
		if r != '\n' && (unicode.IsControl(r) || !unicode.IsPrint(r) && !unicode.IsSpace(r)) {
			t.Errorf("the agent's output holds control character %U:\n%q", r, out)
			break
		}
	}
	for _, line := range strings.Split(out, "\n") {
		if strings.HasPrefix(line, "FORGED") {
			t.Errorf("the agent's output holds a forged line %q:\n%s", line, out)
			break
		}
	}
}

// lockedBuffer is a bytes.Buffer safe for concurrent writers.
type lockedBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *lockedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}
