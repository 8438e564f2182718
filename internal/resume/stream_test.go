package resume

import (
	"io"
	"net"
	"testing"
	"testing/synctest"
	"time"

	"github.com/converge-ci/converge/internal/test/testnet"
)

// TestStreamKeepalive: on an idle stream link the session repeats its
// acknowledgement every keepalive interval, and nothing else; a peer
// takes the repeats as no-ops.
func TestStreamKeepalive(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		acc, _ := NewAcceptor(testConfig())
		defer acc.Close()
		a, b := net.Pipe()
		p := &rawPeer{t: t, conn: a, fr: newFrameReader(a), token: [TokenLen]byte{7}}
		got := make(chan *Conn, 1)
		go func() { c, _ := acc.Attach(Stream(b, 20*time.Second)); got <- c }()
		p.hello(true, 0)
		if f, err := p.fr.read(); err != nil || f.typ != frameHello {
			t.Fatalf("server hello: %q, %v", f.typ, err)
		}
		s := <-got
		defer s.Abort()
		p.send(data(0, "twelve bytes"))
		io.ReadFull(s, make([]byte, 12))
		start := time.Now()
		for i := range 3 {
			f, err := p.fr.read()
			if err != nil || f.typ != frameAck || f.offset != 12 {
				t.Fatalf("frame %d: %q %d, %v; want ack 12", i, f.typ, f.offset, err)
			}
		}
		// The first ack is the real one (50 ms after the read), then one
		// keepalive every 20 s.
		if d := time.Since(start); d < 40*time.Second || d > 41*time.Second {
			t.Errorf("three acks took %v, want 40 s and the ack delay", d)
		}
		p.send(frame{typ: frameAck, offset: 0}) // a repeat from our side: a no-op
		p.send(frame{typ: frameAck, offset: 0})
		if _, err := s.Write([]byte("still alive")); err != nil {
			t.Fatal(err)
		}
		if f, err := p.fr.read(); err != nil || f.typ != frameData {
			t.Fatalf("after repeated acks: %q, %v; want data", f.typ, err)
		}
	})
}

// TestStreamFinishesGracefully: two ends over stream links on real TCP,
// through a relay that closes both legs as soon as either ends (as the
// server does): both sessions finish cleanly, every byte delivered.
func TestStreamFinishesGracefully(t *testing.T) {
	clientEnd, relayA := testnet.TCPPair(t)
	relayB, serverEnd := testnet.TCPPair(t)
	go func() {
		go func() { io.Copy(relayB, relayA); relayA.Close(); relayB.Close() }()
		io.Copy(relayA, relayB)
		relayA.Close()
		relayB.Close()
	}()
	acc, _ := NewAcceptor(testConfig())
	defer acc.Close()
	got := make(chan *Conn, 1)
	go func() { c, _ := acc.Attach(Stream(serverEnd, time.Minute)); got <- c }()
	c, err := Dial(Stream(clientEnd, time.Minute), nil, testConfig())
	if err != nil {
		t.Fatal(err)
	}
	s := <-got
	s.Confirm()
	data := randomBytes(1<<20, 9)
	go func() { s.Write(data); s.Close() }()
	b, err := io.ReadAll(c)
	if err != nil || len(b) != len(data) {
		t.Fatalf("read %d bytes, %v; want %d then EOF", len(b), err, len(data))
	}
	c.Close()
	<-c.Done()
	<-s.Done()
	if c.Err() != nil || s.Err() != nil {
		t.Errorf("sessions ended with %v and %v; want clean finishes", c.Err(), s.Err())
	}
}
