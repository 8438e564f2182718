package resume

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"strings"
	"testing"
	"testing/synctest"
	"time"
)

// farEnd is a server end played by hand over an in-memory pipe, so that
// a test sees every frame a DialEarly client sends and decides when to
// answer.
type farEnd struct {
	t     *testing.T
	conn  net.Conn
	fr    *frameReader
	hello frame
}

// dialEarly starts a client session with DialEarly against a hand-played
// server end and reads the client's hello. redial fails.
func dialEarly(t *testing.T, cfg Config) (*Conn, *farEnd) {
	t.Helper()
	a, b := net.Pipe()
	t.Cleanup(func() { a.Close(); b.Close() })
	f := &farEnd{t: t, conn: b, fr: newFrameReader(b)}
	hello := make(chan frame, 1)
	go func() {
		h, err := f.fr.read()
		if err != nil {
			t.Errorf("read hello: %v", err)
		}
		hello <- h
	}()
	noRedial := func(context.Context) (io.ReadWriteCloser, error) { return nil, errors.New("no redial in this test") }
	c, err := DialEarly(a, noRedial, cfg)
	if err != nil {
		t.Fatalf("DialEarly: %v", err)
	}
	t.Cleanup(func() { c.Abort(); <-c.Done() })
	f.hello = <-hello
	if f.hello.typ != frameHello || f.hello.flags&flagNew == 0 {
		t.Fatalf("first frame %q flags %d, want a new session's hello", f.hello.typ, f.hello.flags)
	}
	return c, f
}

// answer sends the server end's hello for a new session.
func (f *farEnd) answer() {
	f.t.Helper()
	if _, err := f.conn.Write(appendFrame(nil, frame{typ: frameHello, token: f.hello.token, window: MinBuffer})); err != nil {
		f.t.Fatalf("answer: %v", err)
	}
}

// data reads frames until n data bytes arrived, checking that they
// continue the stream at offset from, and returns them.
func (f *farEnd) data(from uint64, n int) []byte {
	f.t.Helper()
	var got []byte
	for len(got) < n {
		fr, err := f.fr.read()
		if err != nil {
			f.t.Fatalf("read after %d of %d bytes: %v", len(got), n, err)
		}
		if fr.typ != frameData {
			continue
		}
		if want := from + uint64(len(got)); fr.offset != want {
			f.t.Fatalf("data frame at offset %d, want %d: bytes sent twice or skipped", fr.offset, want)
		}
		got = append(got, fr.data...)
	}
	return got
}

// TestDialEarlySendsBeforeTheAnswer: what is written right after
// DialEarly leaves before the server end answers, and is not sent again
// once the answer comes.
func TestDialEarlySendsBeforeTheAnswer(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		c, f := dialEarly(t, testConfig())
		if _, err := c.Write([]byte("SSH-2.0-early\r\n")); err != nil {
			t.Fatal(err)
		}
		if got := f.data(0, 15); string(got) != "SSH-2.0-early\r\n" {
			t.Fatalf("early data %q", got)
		}
		f.answer()
		if _, err := c.Write([]byte("after")); err != nil {
			t.Fatal(err)
		}
		if got := f.data(15, 5); string(got) != "after" {
			t.Fatalf("data after the answer %q", got)
		}
	})
}

// TestDialEarlyWindow: before the answer the client end sends at most
// earlyWindow bytes, well below any window a server end announces; the
// rest waits for the answer.
func TestDialEarlyWindow(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		c, f := dialEarly(t, testConfig())
		data := randomBytes(3*earlyWindow, 5)
		wrote := make(chan error, 1)
		go func() { _, err := c.Write(data); wrote <- err }()
		got := f.data(0, earlyWindow)
		synctest.Wait() // the writer and the link are idle: nothing more is coming
		select {
		case err := <-wrote:
			t.Fatalf("Write of %d bytes returned (%v) before the answer", len(data), err)
		default:
		}
		f.answer()
		got = append(got, f.data(earlyWindow, len(data)-earlyWindow)...)
		if !bytes.Equal(got, data) {
			t.Fatal("the server end got other bytes than were written")
		}
		if err := <-wrote; err != nil {
			t.Fatal(err)
		}
	})
}

// TestDialEarlyRefused: a server end that answers with an error ends the
// session, and the reason reaches the reader.
func TestDialEarlyRefused(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		c, f := dialEarly(t, testConfig())
		if _, err := f.conn.Write(appendFrame(nil, frame{typ: frameError, data: []byte("the agent already holds 256 sessions")})); err != nil {
			t.Fatal(err)
		}
		_, err := c.Read(make([]byte, 1))
		if !errors.Is(err, ErrPeerGone) || !strings.Contains(err.Error(), "256 sessions") {
			t.Errorf("Read: %v, want ErrPeerGone with the reason", err)
		}
		<-c.Done()
	})
}

// TestDialEarlyLinkLost: a link that fails before the answer ends the
// session: the server end may never have heard of it, so there is
// nothing to resume (redial is not called).
func TestDialEarlyLinkLost(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		c, f := dialEarly(t, testConfig())
		f.conn.Close()
		<-c.Done()
		if err := c.Err(); err == nil || !strings.Contains(err.Error(), "before the other end answered") {
			t.Errorf("Err: %v, want the link lost before the answer", err)
		}
	})
}

// TestDialEarlySilent: a server end that never answers ends the session
// after the handshake timeout.
func TestDialEarlySilent(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		cfg := testConfig()
		cfg.Validate()
		c, f := dialEarly(t, cfg)
		go io.Copy(io.Discard, f.conn) // reads, never answers
		start := time.Now()
		<-c.Done()
		if d := time.Since(start); d != cfg.HandshakeTimeout {
			t.Errorf("session ended after %v, want the handshake timeout %v", d, cfg.HandshakeTimeout)
		}
		if err := c.Err(); err == nil || !strings.Contains(err.Error(), "did not answer") {
			t.Errorf("Err: %v, want no answer", err)
		}
	})
}

// TestDialEarlyFramesBeforeHello: data from a server end that has not
// answered the hello is a protocol violation.
func TestDialEarlyFramesBeforeHello(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		c, f := dialEarly(t, testConfig())
		if _, err := f.conn.Write(appendFrame(nil, frame{typ: frameData, data: []byte("x")})); err != nil {
			t.Fatal(err)
		}
		<-c.Done()
		if err := c.Err(); !errors.Is(err, ErrProtocol) {
			t.Errorf("Err: %v, want ErrProtocol", err)
		}
	})
}

// TestDialEarlyResumes: a session started early survives a cut link once
// answered, like any other, and delivers every byte exactly once, also
// those sent before the answer.
func TestDialEarlyResumes(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		cfg := testConfig()
		w := newWorld(t, cfg, 100<<10) // the first link dies after 100 KiB
		l, _ := w.link(t.Context())
		c, err := DialEarly(l, w.link, cfg)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Abort(); <-c.Done() })
		early := []byte("written before the answer")
		if _, err := c.Write(early); err != nil {
			t.Fatal(err)
		}
		s := <-w.accepted
		got := make([]byte, len(early))
		if _, err := io.ReadFull(s, got); err != nil || !bytes.Equal(got, early) {
			t.Fatalf("server end read %q, %v; want %q", got, err, early)
		}
		exchange(t, c, s, randomBytes(1<<20, 8), randomBytes(1<<20, 9))
		if w.links < 2 {
			t.Errorf("only %d links were used; the case did not drop anything", w.links)
		}
	})
}
