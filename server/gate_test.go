package server

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"net/http/httptest"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/converge-ci/converge/internal/wire"
)

// clientFrame is a masked frame as an agent sends it (mask key 1 2 3 4;
// the gate never unmasks, so the payload is whatever the test says).
func clientFrame(fin bool, op byte, payload []byte) []byte {
	b0 := op
	if fin {
		b0 |= wsFin
	}
	h := []byte{b0, wsMasked}
	switch n := len(payload); {
	case n < wsLen16:
		h[1] |= byte(n)
	case n <= 0xffff:
		h[1] |= wsLen16
		h = binary.BigEndian.AppendUint16(h, uint16(n))
	default:
		h[1] |= wsLen64
		h = binary.BigEndian.AppendUint64(h, uint64(n))
	}
	h = append(h, 1, 2, 3, 4)
	return append(h, payload...)
}

// readRecorder hands out as much as each read asks and records where
// each read began and ended in the stream.
type readRecorder struct {
	r     *bytes.Reader
	off   int
	spans [][2]int
}

func (r *readRecorder) Read(p []byte) (int, error) {
	n, err := r.r.Read(p)
	if n > 0 {
		r.spans = append(r.spans, [2]int{r.off, r.off + n})
		r.off += n
	}
	return n, err
}

// TestFrameGate: what the WebSocket library reads through the gate is the
// agent's frames byte for byte, with a nudge after each ping or pong that
// is not inside a fragmented message, and no read of the connection goes
// past the end of a frame (so the library's buffer is empty between
// messages).
func TestFrameGate(t *testing.T) {
	nudge := nudgeFrame[:]
	big := bytes.Repeat([]byte("x"), 70000)
	frames := [][]byte{
		clientFrame(true, 0x1, []byte(`{"type":"status"}`)),
		clientFrame(true, wsOpPing, []byte("1")),
		clientFrame(true, 0x1, bytes.Repeat([]byte("y"), 300)), // 16-bit length
		clientFrame(false, 0x1, []byte("first half,")),         // a fragmented message ...
		clientFrame(true, wsOpPing, []byte("2")),               // ... with a ping inside: no nudge
		clientFrame(true, 0x0, []byte("second half")),
		clientFrame(true, wsOpPong, nil), // empty pong
		clientFrame(true, 0x2, big),      // 64-bit length
		clientFrame(true, 0x8, []byte{0x03, 0xe8}),
	}
	nudgeAfter := map[int]bool{1: true, 6: true}
	var in, want []byte
	var ends []int
	for i, f := range frames {
		in = append(in, f...)
		ends = append(ends, len(in))
		want = append(want, f...)
		if nudgeAfter[i] {
			want = append(want, nudge...)
		}
	}
	// Bytes net/http read before the hand-over come first, through the
	// same gate: none, part of a header, a frame and a bit.
	for _, early := range []int{0, 1, 7, ends[0] + 3} {
		rec := &readRecorder{r: bytes.NewReader(in[early:])}
		got, err := io.ReadAll(bufio.NewReaderSize(newFrameGate(rec, nil, bytes.Clone(in[:early])), leanBuffer))
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, want) {
			t.Fatalf("through the gate, %d bytes early: %d bytes, want %d (the frames and two nudges)", early, len(got), len(want))
		}
		for _, s := range rec.spans {
			for _, e := range ends {
				if e -= early; s[0] < e && e < s[1] {
					t.Fatalf("%d bytes early: a read of bytes %d to %d crossed the end of a frame at %d", early, s[0], s[1], e)
				}
			}
		}
	}
}

// TestIdleAgentHoldsNoGoroutine: once a registered agent has pinged
// (which the server answers) and said nothing else, no goroutine of the
// server is its: it waits in the idle poller (Linux); a status sent
// afterwards still arrives, and the agent's end is seen. Where there is
// no poller (a server whose Run did not start one, as on other systems),
// its goroutine waits on the socket, not in the WebSocket library's read.
func TestIdleAgentHoldsNoGoroutine(t *testing.T) {
	t.Run("poller", func(t *testing.T) {
		if runtime.GOOS != "linux" {
			t.Skip("the idle poller is Linux only")
		}
		r := runServer(t)
		idleAgent(t, r.Server, r.ws(), func(a *agentConn) (string, bool) {
			stack := goroutineWith("(*agentConn).", fmt.Sprintf("(%p", a)) // running any method of a
			return stack, stack == ""
		})
	})
	t.Run("goroutine", func(t *testing.T) {
		s := newTestServer(t)
		ts := httptest.NewServer(s.handler)
		t.Cleanup(ts.Close)
		idleAgent(t, s, "ws"+strings.TrimPrefix(ts.URL, "http"), func(a *agentConn) (string, bool) {
			stack := goroutineWith(fmt.Sprintf("(*agentConn).serve(%p", a))
			return stack, strings.Contains(stack, "(*frameGate).wait") && !strings.Contains(stack, "coder/websocket") &&
				!strings.Contains(stack, "net/http") // not the handler's goroutine
		})
	})
}

// idleAgent registers an agent with the server s at wsBase, pings it
// three times, waits until idle says the server holds it idle as it
// should (or fails with what idle returned), then sends a status that
// must arrive, and closes: the server must let the ID go.
func idleAgent(t *testing.T, s *Server, wsBase string, idle func(*agentConn) (string, bool)) {
	ag := dialAgent(t, wsBase, "idle", wire.Info{})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	a := s.agent("idle")
	for a == nil && ctx.Err() == nil { // the server confirms it just after the welcome
		time.Sleep(10 * time.Millisecond)
		a = s.agent("idle")
	}
	if a == nil || a.gate == nil {
		t.Fatal("the agent's connection has no socket to wait on")
	}
	reading := make(chan struct{})
	go func() { // the agent's reader, which takes the pongs in
		defer close(reading)
		for {
			if _, _, err := ag.ws.Read(ctx); err != nil {
				return
			}
		}
	}()
	for i := range 3 {
		if err := ag.ws.Ping(ctx); err != nil {
			t.Fatalf("ping %d: %v", i, err)
		}
	}
	var what string
	for ok := false; !ok; time.Sleep(10 * time.Millisecond) {
		if what, ok = idle(a); !ok && ctx.Err() != nil {
			t.Fatalf("after three pings the agent is held here:\n%s", what)
		}
	}
	ag.send(t, wire.Message{Type: wire.TypeStatus, Status: &wire.Status{Sessions: 2}})
	for a.Info().Status.Sessions != 2 {
		if ctx.Err() != nil {
			t.Fatal("the status sent after the pings never arrived")
		}
		time.Sleep(10 * time.Millisecond)
	}
	ag.ws.CloseNow()
	<-reading
	for s.agent("idle") != nil {
		if ctx.Err() != nil {
			t.Fatal("the agent's ID is still held after its connection closed")
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// goroutineWith is the stack of a goroutine whose stack holds every one
// of parts, or "".
func goroutineWith(parts ...string) string {
	buf := make([]byte, 1<<20)
	buf = buf[:runtime.Stack(buf, true)]
next:
	for g := range strings.SplitSeq(string(buf), "\n\n") {
		for _, p := range parts {
			if !strings.Contains(g, p) {
				continue next
			}
		}
		return g
	}
	return ""
}
