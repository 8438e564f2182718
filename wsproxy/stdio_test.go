package wsproxy

import (
	"context"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/converge-ci/converge/internal/resume"
	"github.com/converge-ci/converge/internal/wsconn"
)

// resumeEnd serves /client/ID on 127.0.0.1:0 as an agent's resumable
// end would, and hands each session it starts to the test.
func resumeEnd(t *testing.T) (url string, sessions <-chan *resume.Conn) {
	t.Helper()
	acc, err := resume.NewAcceptor(resume.Config{Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	ch := make(chan *resume.Conn, 1)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		c, err := wsconn.Accept(w, r, resume.Protocol)
		if err != nil {
			return
		}
		conn, err := acc.Attach(resume.WebSocket(c, wsconn.PingInterval, wsconn.PingTimeout))
		if err == nil && conn != nil {
			ch <- conn
		}
	})}
	served := make(chan struct{})
	go func() { defer close(served); srv.Serve(ln) }()
	t.Cleanup(func() { srv.Close(); <-served; acc.Close() })
	return "ws://" + ln.Addr().String() + "/client/x", ch
}

type nopWriteCloser struct{ io.Writer }

func (nopWriteCloser) Close() error { return nil }

// TestReleasedBeforeLinger: Stdio calls Released as soon as the user's
// side has ended, while the resumable stream still lingers for the agent
// to read the end of it, so that the wsproxy command can let go of the
// stderr a waiting program holds the other end of.
func TestReleasedBeforeLinger(t *testing.T) {
	url, sessions := resumeEnd(t)
	tgt, err := ParseTarget(url)
	if err != nil {
		t.Fatal(err)
	}
	released := make(chan error, 1)
	done := make(chan error, 1)
	go func() {
		done <- Stdio(context.Background(), tgt, io.NopCloser(strings.NewReader("bye")), nopWriteCloser{io.Discard},
			Options{Logger: slog.New(slog.DiscardHandler), Released: func(err error) { released <- err }})
	}()
	agentEnd := <-sessions
	defer agentEnd.Abort()
	if err := <-released; err != nil {
		t.Errorf("Released(%v), want nil for a normal end", err)
	}
	select {
	case err := <-done:
		t.Fatalf("Stdio returned (%v) before the agent's end read the end of the stream", err)
	default: // still lingering: the agent's end has read nothing, so acknowledged nothing
	}
	agentEnd.SetReadDeadline(time.Now().Add(10 * time.Second))
	got, err := io.ReadAll(agentEnd)
	if err != nil || string(got) != "bye" {
		t.Fatalf("agent's end read %q, %v; want bye and the end of the stream", got, err)
	}
	agentEnd.Close()
	if err := <-done; err != nil {
		t.Errorf("Stdio: %v", err)
	}
}
