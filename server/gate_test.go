package server

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"io"
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

// TestIdleAgentWaitsShallow: once a registered agent has pinged (which the
// server answers) and said nothing else, the server's goroutine for it
// waits on the socket, not in the WebSocket library's read; a status sent
// afterwards still arrives.
func TestIdleAgentWaitsShallow(t *testing.T) {
	r := runServer(t)
	ag := dialAgent(t, r.ws(), "shallow", wire.Info{})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	a := r.agent("shallow")
	for a == nil && ctx.Err() == nil { // the server confirms it just after the welcome
		time.Sleep(10 * time.Millisecond)
		a = r.agent("shallow")
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
	serve := fmt.Sprintf("(*agentConn).serve(%p", a)
	var stack string
	for ctx.Err() == nil {
		stack = goroutineWith(serve)
		if strings.Contains(stack, "(*frameGate).wait") {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	if !strings.Contains(stack, "(*frameGate).wait") || strings.Contains(stack, "coder/websocket") {
		t.Fatalf("after three pings the agent's goroutine waits here:\n%s", stack)
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
}

// goroutineWith is the stack of the goroutine whose stack holds s, or "".
func goroutineWith(s string) string {
	buf := make([]byte, 1<<20)
	buf = buf[:runtime.Stack(buf, true)]
	for g := range strings.SplitSeq(string(buf), "\n\n") {
		if strings.Contains(g, s) {
			return g
		}
	}
	return ""
}
