package ctl

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"testing"
)

func TestServer(t *testing.T) {
	s, err := Listen(t.TempDir(), []Command{{Name: "echo", Summary: "say it back", Run: func(_ context.Context, c *Call) error {
		fmt.Fprintf(c.Stdout, "%s from %s/%s", strings.Join(c.Args, " "), c.Caller.Conn, c.Caller.Session)
		return nil
	}}, {Name: "fail", Run: func(context.Context, *Call) error { return fmt.Errorf("no way") }}},
		slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	env, release := s.Session(Caller{Conn: "c1", Session: "s1"})
	for _, kv := range env {
		k, v, _ := strings.Cut(kv, "=")
		t.Setenv(k, v)
	}
	for _, tc := range []struct {
		args       []string
		exit       int
		out, error string
	}{
		{[]string{"echo", "hi"}, 0, "hi from c1/s1", ""},
		{[]string{"--help"}, 0, "say it back", ""},
		{nil, 0, "echo", ""},
		{[]string{"nope"}, 2, "", `no command "nope"`},
		{[]string{"fail"}, 1, "", "converge fail: no way"},
	} {
		var out, errOut bytes.Buffer
		code := Main(tc.args, &out, &errOut)
		if code != tc.exit || !strings.Contains(out.String(), tc.out) || !strings.Contains(errOut.String(), tc.error) {
			t.Errorf("converge %q: exit %d, stdout %q, stderr %q; want %d, %q, %q", tc.args, code, out.String(), errOut.String(), tc.exit, tc.out, tc.error)
		}
	}
	// A wrong secret, or the secret of a session that ended, gets nothing.
	release()
	var out, errOut bytes.Buffer
	if code := Main([]string{"echo", "hi"}, &out, &errOut); code != 2 || out.Len() > 0 {
		t.Errorf("ended session: exit %d, stdout %q; want 2 and nothing", code, out.String())
	}
	if r, err := Send(s.Path(), Request{Secret: "guess", Command: "echo"}); err != nil || r.Exit != 2 || r.Stdout != "" {
		t.Errorf("guessed secret: %+v, %v", r, err)
	}
}

// TestServerStreams: a streaming command's output reaches the converge
// command as it is written, before the command ends.
func TestServerStreams(t *testing.T) {
	release := make(chan struct{})
	s, err := Listen(t.TempDir(), []Command{{Name: "build", Stream: true, Run: func(_ context.Context, c *Call) error {
		fmt.Fprint(c.Stdout, "first part\n")
		<-release // until the test has seen the first part
		fmt.Fprint(c.Stderr, "warning\n")
		c.Exit = 3
		return nil
	}}}, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	env, _ := s.Session(Caller{Conn: "c1", Session: "s1"})
	for _, kv := range env {
		k, v, _ := strings.Cut(kv, "=")
		t.Setenv(k, v)
	}
	out := &seenWriter{want: "first part\n", seen: release}
	var errOut bytes.Buffer
	if code := Main([]string{"build"}, out, &errOut); code != 3 || out.b.String() != "first part\n" || errOut.String() != "warning\n" {
		t.Errorf("converge build: exit %d, stdout %q, stderr %q; want 3, the first part, the warning", code, out.b.String(), errOut.String())
	}
}

// seenWriter closes seen once what it was written holds want.
type seenWriter struct {
	b    bytes.Buffer
	want string
	seen chan struct{}
}

func (w *seenWriter) Write(p []byte) (int, error) {
	w.b.Write(p)
	if w.seen != nil && strings.Contains(w.b.String(), w.want) {
		close(w.seen)
		w.seen = nil
	}
	return len(p), nil
}
