package resume

import (
	"bytes"
	"errors"
	"io"
	"net"
	"testing"
	"testing/synctest"
)

// rawPeer plays the client end by hand, frame by frame, against an
// Acceptor, to send what a correct Conn never would.
type rawPeer struct {
	t     *testing.T
	conn  net.Conn
	fr    *frameReader
	token [TokenLen]byte
}

func (p *rawPeer) send(f frame) {
	p.t.Helper()
	if _, err := p.conn.Write(appendFrame(nil, f)); err != nil {
		p.t.Fatalf("send %q: %v", f.typ, err)
	}
}

func (p *rawPeer) hello(isNew bool, received uint64) {
	p.t.Helper()
	h := frame{typ: frameHello, token: p.token, offset: received, window: MinBuffer}
	if isNew {
		h.flags = flagNew
	}
	p.send(h)
}

// attach connects a new link to acc and returns the server's hello. A new
// session is confirmed, so that it resumes.
func (p *rawPeer) attach(acc *Acceptor, isNew bool, received uint64) (*Conn, frame) {
	p.t.Helper()
	a, b := net.Pipe()
	p.conn, p.fr = a, newFrameReader(a)
	got := make(chan *Conn, 1)
	go func() {
		c, _ := acc.Attach(b)
		if c != nil {
			c.Confirm()
		}
		got <- c
	}()
	p.hello(isNew, received)
	f, err := p.fr.read()
	if err != nil {
		p.t.Fatalf("read server hello: %v", err)
	}
	return <-got, f
}

func data(off uint64, s string) frame { return frame{typ: frameData, offset: off, data: []byte(s)} }

// TestOverlappingReplays: duplicated and overlapping data, as replays after
// a drop produce, is delivered exactly once.
func TestOverlappingReplays(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		acc, _ := NewAcceptor(testConfig())
		defer acc.Close()
		p := &rawPeer{t: t, token: [TokenLen]byte{1}}
		s, h := p.attach(acc, true, 0)
		if h.typ != frameHello || h.offset != 0 {
			t.Fatalf("server hello %+v", h)
		}
		const text = "0123456789abcdefghij"
		p.send(data(0, text[:10]))
		p.send(data(5, text[5:15])) // overlaps
		p.send(data(0, text[:15]))  // all seen
		p.send(data(15, text[15:])) // fresh
		p.send(data(3, text[3:4]))  // stale single byte
		got := make([]byte, len(text))
		if _, err := io.ReadFull(s, got); err != nil || string(got) != text {
			t.Fatalf("read %q, %v; want %q", got, err, text)
		}
		// Drop the link; the new hello reports all 20 bytes received, and
		// a replay of old bytes on the new link is still skipped.
		p.conn.Close()
		_, h = p.attach(acc, false, 0)
		if h.offset != uint64(len(text)) {
			t.Errorf("server reports %d bytes received, want %d", h.offset, len(text))
		}
		p.send(data(10, text[10:]+"KL"))
		more := make([]byte, 2)
		if _, err := io.ReadFull(s, more); err != nil || string(more) != "KL" {
			t.Fatalf("read %q, %v; want KL", more, err)
		}
		s.Abort()
	})
}

// TestProtocolViolations: a peer that breaks the rules ends its session
// with ErrProtocol instead of corrupting the stream or growing memory.
func TestProtocolViolations(t *testing.T) {
	for name, bad := range map[string]func(p *rawPeer){
		"gap": func(p *rawPeer) { p.send(data(5, "x")) },
		"beyond the window": func(p *rawPeer) {
			big := make([]byte, MaxPayload)
			for off := uint64(0); off <= MinBuffer; off += MaxPayload {
				p.send(frame{typ: frameData, offset: off, data: big})
			}
		},
		"ack of unsent":  func(p *rawPeer) { p.send(frame{typ: frameAck, offset: 1}) },
		"data after fin": func(p *rawPeer) { p.send(frame{typ: frameFin, offset: 0}); p.send(data(1, "x")) },
		"hello mid-link": func(p *rawPeer) { p.hello(false, 0) },
	} {
		t.Run(name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				acc, _ := NewAcceptor(testConfig())
				defer acc.Close()
				p := &rawPeer{t: t, token: [TokenLen]byte{2}}
				s, _ := p.attach(acc, true, 0)
				go io.Copy(io.Discard, p.conn) // keep reading whatever the server sends
				bad(p)
				<-s.Done()
				if err := s.Err(); !errors.Is(err, ErrProtocol) {
					t.Errorf("session ended with %v, want ErrProtocol", err)
				}
			})
		})
	}
}

// TestResumeClaimsImpossibleOffset: a returning client claiming to have
// received bytes never sent is refused, not trusted.
func TestResumeClaimsImpossibleOffset(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		acc, _ := NewAcceptor(testConfig())
		defer acc.Close()
		p := &rawPeer{t: t, token: [TokenLen]byte{3}}
		s, _ := p.attach(acc, true, 0)
		s.Write([]byte("abc"))
		p.conn.Close()
		a, b := net.Pipe()
		go acc.Attach(b)
		p.conn = a
		go io.Copy(io.Discard, a)
		p.hello(false, 1000)
		<-s.Done()
		if err := s.Err(); !errors.Is(err, ErrProtocol) {
			t.Errorf("session ended with %v, want ErrProtocol", err)
		}
	})
}

// TestUnknownTokenRefused: resuming a session the acceptor never had gets
// an error frame with a reason.
func TestUnknownTokenRefused(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		acc, _ := NewAcceptor(testConfig())
		defer acc.Close()
		a, b := net.Pipe()
		errc := make(chan error, 1)
		go func() { _, err := acc.Attach(b); errc <- err }()
		p := &rawPeer{t: t, conn: a, fr: newFrameReader(a), token: [TokenLen]byte{4}}
		p.hello(false, 0)
		f, err := p.fr.read()
		if err != nil || f.typ != frameError || !bytes.Contains(f.data, []byte("no such session")) {
			t.Fatalf("got %q frame %q, %v; want an error frame naming the problem", f.typ, f.data, err)
		}
		if err := <-errc; err == nil {
			t.Error("Attach returned no error")
		}
	})
}

// TestAckRepeatedOnNewLink: an acknowledgement sent just before a drop
// may be lost with the link; the peer's window would then stay closed
// forever. The first thing on a new link is the acknowledgement again.
func TestAckRepeatedOnNewLink(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		acc, _ := NewAcceptor(testConfig())
		defer acc.Close()
		p := &rawPeer{t: t, token: [TokenLen]byte{5}}
		s, _ := p.attach(acc, true, 0)
		p.send(data(0, "hundred bytes? no, twenty"))
		io.ReadFull(s, make([]byte, 25))
		for { // the acknowledgement goes out on the first link...
			f, err := p.fr.read()
			if err != nil {
				t.Fatal(err)
			}
			if f.typ == frameAck && f.offset == 25 {
				break
			}
		}
		p.conn.Close() // ...and is lost with it
		_, h := p.attach(acc, false, 0)
		if h.offset != 25 {
			t.Fatalf("server hello reports %d received, want 25", h.offset)
		}
		f, err := p.fr.read()
		if err != nil || f.typ != frameAck || f.offset != 25 {
			t.Fatalf("first frame on the new link: %q %d, %v; want ack 25", f.typ, f.offset, err)
		}
		s.Abort()
	})
}

// TestReadLendsItsBuffer: bytes that arrive while a Read waits go straight
// into its buffer, the rest to the ring, all in order, and count against
// the window until read.
func TestReadLendsItsBuffer(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		acc, _ := NewAcceptor(testConfig())
		defer acc.Close()
		p := &rawPeer{t: t, token: [TokenLen]byte{9}}
		s, _ := p.attach(acc, true, 0)
		defer s.Abort()
		got := make(chan string, 1)
		go func() {
			b := make([]byte, 10)
			n, err := s.Read(b)
			if err != nil {
				t.Error(err)
			}
			got <- string(b[:n])
		}()
		synctest.Wait() // the Read waits, lending its 10 bytes
		p.send(data(0, "0123456789abcdef"))
		p.send(data(16, "ghij"))
		if g := <-got; g != "0123456789" {
			t.Fatalf("first Read: %q, want the first 10 bytes", g)
		}
		rest := make([]byte, 10)
		if _, err := io.ReadFull(s, rest); err != nil || string(rest) != "abcdefghij" {
			t.Fatalf("then: %q, %v; want the next 10 bytes in order", rest, err)
		}
		// The window still holds: MinBuffer bytes unread is the most.
		for off := 0; off < MinBuffer; off += MaxPayload {
			p.send(data(uint64(20+off), string(make([]byte, MaxPayload))))
		}
		synctest.Wait()
		if s.over() {
			t.Fatalf("a full window ended the session: %v", s.Err())
		}
		p.send(data(20+MinBuffer, "x"))
		synctest.Wait()
		if !s.over() {
			t.Fatal("a byte beyond the window did not end the session")
		}
	})
}
