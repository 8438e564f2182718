package lifetime

import (
	"errors"
	"io"
	"log/slog"
	"net"
	"testing"
	"time"

	"github.com/gliderlabs/ssh"
	gossh "golang.org/x/crypto/ssh"
)

// hookedServer serves SSH on loopback with l hooked in: every session
// echoes what it reads; a connection whose user is "observer" is
// watch-only.
func hookedServer(t *testing.T, l *Lifetime) string {
	t.Helper()
	srv := &ssh.Server{
		Handler:         func(s ssh.Session) { io.Copy(s, s) },
		PasswordHandler: func(ssh.Context, string) bool { return true },
	}
	l.Hook(srv, func(ctx ssh.Context) bool { return ctx.User() == "observer" })
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ln) }()
	t.Cleanup(func() {
		srv.Close()
		if err := <-done; !errors.Is(err, ssh.ErrServerClosed) {
			t.Errorf("serve: %v", err)
		}
	})
	return ln.Addr().String()
}

// echoShell logs in as user, opens a shell and returns a func that types
// b and waits for its echo: once it returns, the server has read b.
func echoShell(t *testing.T, addr, user string) (typeIt func(b string)) {
	t.Helper()
	c, err := gossh.Dial("tcp", addr, &gossh.ClientConfig{
		User: user, Auth: []gossh.AuthMethod{gossh.Password("x")},
		HostKeyCallback: gossh.InsecureIgnoreHostKey(),
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	s, err := c.NewSession()
	if err != nil {
		t.Fatal(err)
	}
	in, _ := s.StdinPipe()
	out, _ := s.StdoutPipe()
	if err := s.Shell(); err != nil {
		t.Fatal(err)
	}
	return func(b string) {
		t.Helper()
		if _, err := io.WriteString(in, b); err != nil {
			t.Fatal(err)
		}
		got := make([]byte, len(b))
		if _, err := io.ReadFull(out, got); err != nil || string(got) != b {
			t.Fatalf("echo of %q: %q, %v", b, got, err)
		}
	}
}

// An observer's keystrokes are no user's input: they do not move the idle
// expiry, while a writer's do.
func TestHookObserverInputIsNoActivity(t *testing.T) {
	l := New(Config{Expiry: time.Hour}, t.TempDir(), slog.New(slog.DiscardHandler), nil)
	addr := hookedServer(t, l)
	long := time.Now().Add(-24 * time.Hour)
	setActive := func() {
		l.mu.Lock()
		l.st.active = long
		l.mu.Unlock()
	}
	active := func() time.Time {
		l.mu.Lock()
		defer l.mu.Unlock()
		return l.st.active
	}

	watcher := echoShell(t, addr, "observer")
	watcher("x") // logged in by now
	setActive()
	for range 100 {
		watcher("ls\r")
	}
	if got := active(); !got.Equal(long) {
		t.Errorf("an observer's typing moved the last input to %v", got)
	}
	l.mu.Lock()
	users := l.st.users
	l.mu.Unlock()
	if users != 1 {
		t.Errorf("logged in: %d, want the observer counted as 1", users)
	}

	writer := echoShell(t, addr, "owner")
	writer("x")
	setActive()
	writer("ls\r")
	if got := active(); !got.After(long) {
		t.Errorf("a writer's typing left the last input at %v", got)
	}
}
