package resume

import (
	"bytes"
	"errors"
	"io"
	"log/slog"
	"net"
	"os"
	"testing"
	"time"
)

// FuzzSession drives one end's state machine with an arbitrary program:
// frames from the peer (well-formed at offsets near the expected one, or
// raw bytes through the frame reader), reads, writes, Close, the writer
// putting what is due on the wire, and drops followed by the resume
// hellos. Nothing may panic; the buffers never exceed the window (nor
// the peer's, for unacknowledged bytes); bytes are delivered in order and
// exactly once, and sent and replayed exactly as written; a frame ends
// the session exactly when a small model of the protocol says it must.
// The seeds run in every `go test`; `go test -fuzz FuzzSession
// ./internal/resume` explores further.
func FuzzSession(f *testing.F) {
	for _, p := range [][]byte{
		// An ordinary exchange and goodbye on one link.
		prog(4).write(50000, 1).drain().ack(true, 0).data(0, 0, 5000).read(4000).
			read(4000).drain().close().drain().fin(0).read(1).ack(true, 0),
		// Fill the peer's window, lose the link, replay from what the peer
		// got, then from the start of the buffer.
		prog(4).write(0xffff, 63).drain().resume(2, 300).drain().resume(0, 0).drain().ack(true, 0),
		// A small peer window blocks writes early.
		prog(1).write(0xffff, 3).drain().ack(false, 100).write(0xffff, 0).drain(),
		// Replays and overlaps on the receiving side; then a gap.
		prog(4).data(0, 0, 100).data(-50, 0, 100).data(-128, 1, 10).read(500).data(1, 0, 1),
		// A peer that ignores our window.
		prog(4).data(0, 0, 0xffff).data(0, 0, 0xffff).data(0, 0, 0xffff).data(0, 0, 0xffff).
			data(0, 0, 0xffff).data(0, 0, 0xffff).data(0, 0, 0xffff).data(0, 0, 0xffff).
			data(0, 0, 0xffff).data(0, 0, 0xffff).data(0, 0, 0xffff).data(0, 0, 0xffff).
			data(0, 0, 0xffff).data(0, 0, 0xffff).data(0, 0, 0xffff).data(0, 0, 0xffff).
			data(0, 0, 0xffff).data(0, 0, 0xffff).data(0, 0, 0xffff).data(0, 0, 0xffff).
			data(0, 0, 0xffff).data(0, 0, 0xffff).data(0, 0, 0xffff).data(0, 0, 0xffff).
			data(0, 0, 0xffff).data(0, 0, 0xffff).data(0, 0, 0xffff).data(0, 0, 0xffff).
			data(0, 0, 0xffff).data(0, 0, 0xffff).data(0, 0, 0xffff).data(0, 0, 0xffff).data(0, 0, 0xffff),
		// Close with unread bytes, data and FIN still arriving, resume.
		prog(5).data(0, 0, 300).close().data(0, 0, 10).fin(0).fin(-1).drain().resume(1, 0).drain(),
		// Close with bytes unacknowledged; the link drops; the bytes and
		// the FIN are replayed and acknowledged.
		prog(4).write(3000, 0).drain().close().drain().resume(0, 0).drain().ack(true, 0),
		// Acknowledgements beyond what was sent; a FIN at the wrong place.
		prog(4).write(10, 0).ack(true, 0).drain().ack(false, 1),
		prog(4).fin(3),
		// Resume claiming bytes never sent, or below what was acknowledged.
		prog(4).write(1000, 0).drain().ack(true, 0).resume(3, 1),
		prog(4).resume(2, 1),
		// Raw frames: a valid ack, an error frame, a hello mid-link, garbage.
		prog(4).write(5, 0).drain().raw(appendFrame(nil, frame{typ: frameAck, offset: 5})),
		prog(4).raw(appendFrame(nil, frame{typ: frameError, data: []byte("bye")})),
		prog(4).raw(appendFrame(nil, frame{typ: frameHello, window: MinBuffer})),
		prog(4).raw([]byte{frameData, 0xff, 0xff, 0xff, 0xff, 1, 2}).data(0, 0, 1),
		// A window below one frame is refused at the first hello.
		prog(0),
		prog(6).write(0xffff, 63).write(0xffff, 63).drain(),
	} {
		f.Add([]byte(p))
	}
	f.Fuzz(func(t *testing.T, p []byte) { runSession(t, p) })
}

// Program operations: one byte (mod numOps), then their arguments.
const (
	opData   = iota // delta int8, mul, n uint16: data at inNext+delta*(1+mul), 1+n%MaxPayload bytes
	opAck           // mode, n uint16: even mode acknowledges all sent, odd acked+16n
	opFin           // delta int8: FIN at inNext+delta
	opRaw           // n uint16, then n bytes through the frame reader
	opWrite         // n uint16, mul: write n*(1+mul%64) bytes
	opRead          // n uint16: read up to 1+n bytes
	opClose         //
	opDrain         // the writer sends every frame that is due
	opResume        // mode, n uint16: new link; the peer reports (0) the oldest byte held, (1) everything, (2) oldest+64n, (3) oldest-n%256
	numOps
)

// fuzzWindows are the windows a fuzzed peer may announce; the first is
// below one frame and refused.
var fuzzWindows = [...]uint32{MaxPayload - 1, MaxPayload, MaxPayload + 1, 1 << 20, MinBuffer, DefaultBuffer, 1<<32 - 1}

// The byte at stream offset o is ours[o%ourLen] from this end and
// theirs[o%theirLen] from the peer: prime periods, so a replay from the
// wrong offset shows. Each holds its period twice, so any window of up
// to a period is one slice.
const ourLen, theirLen = 65537, 65539 // primes, and above MaxPayload

var ours, theirs = twice(randomBytes(ourLen, 1)), twice(randomBytes(theirLen, 2))

func twice(b []byte) []byte { return append(b, b...) }

func ourBytes(off uint64, n int) []byte {
	i := int(off % ourLen)
	return ours[i : i+n]
}

func theirBytes(off uint64, n int) []byte {
	i := int(off % theirLen)
	return theirs[i : i+n]
}

// progBuilder writes seed programs.
type progBuilder []byte

func prog(window byte) progBuilder { return progBuilder{window} }
func (p progBuilder) op(op byte, args ...byte) progBuilder {
	return append(append(p, op), args...)
}
func (p progBuilder) data(delta int8, mul byte, n uint16) progBuilder {
	return p.op(opData, byte(delta), mul, byte(n>>8), byte(n))
}
func (p progBuilder) ack(all bool, n uint16) progBuilder {
	mode := byte(1)
	if all {
		mode = 0
	}
	return p.op(opAck, mode, byte(n>>8), byte(n))
}
func (p progBuilder) fin(delta int8) progBuilder { return p.op(opFin, byte(delta)) }
func (p progBuilder) raw(b []byte) progBuilder {
	return append(p.op(opRaw, byte(len(b)>>8), byte(len(b))), b...)
}
func (p progBuilder) write(n uint16, mul byte) progBuilder {
	return p.op(opWrite, byte(n>>8), byte(n), mul)
}
func (p progBuilder) read(n uint16) progBuilder { return p.op(opRead, byte(n>>8), byte(n)) }
func (p progBuilder) close() progBuilder        { return p.op(opClose) }
func (p progBuilder) drain() progBuilder        { return p.op(opDrain) }
func (p progBuilder) resume(mode byte, n uint16) progBuilder {
	return p.op(opResume, mode, byte(n>>8), byte(n))
}

// sim runs a program against a server-end Conn, with a model of what it
// must have received.
type sim struct {
	t      *testing.T
	prog   []byte
	c      *Conn
	window uint32 // what the peer announces in every hello
	win    int    // the window as the Conn applies it
	fr     *frameReader
	raw    bytes.Reader
	buf    []byte

	unread []byte // received and not read: what c.in must hold
	inNext uint64 // received, counting the FIN
	finIn  bool
	closed bool
	wrote  uint64 // bytes written: ours at offsets 0..wrote-1
}

func (s *sim) next() byte {
	if len(s.prog) == 0 {
		return 0
	}
	b := s.prog[0]
	s.prog = s.prog[1:]
	return b
}

func (s *sim) next16() int { return int(s.next())<<8 | int(s.next()) }

func runSession(t *testing.T, p []byte) {
	cfg := Config{Buffer: MinBuffer, AckDelay: time.Nanosecond, Logger: slog.New(slog.DiscardHandler)}
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	s := &sim{t: t, prog: p, c: newConn(cfg, [TokenLen]byte{7}, false), buf: make([]byte, headerLen+maxBody)}
	defer s.c.Abort()
	s.fr = newFrameReader(&s.raw)
	s.window = fuzzWindows[int(s.next())%len(fuzzWindows)]
	s.win = int(min(s.window, 1<<30))
	c := s.c
	past := time.Unix(1, 0) // Read and Write never wait
	c.SetDeadline(past)
	c.mu.Lock()
	err := c.resumeFromLocked(frame{typ: frameHello, token: c.token, window: s.window})
	c.helloLocked(true)
	c.mu.Unlock()
	if (err != nil) != (s.window < MaxPayload) {
		t.Fatalf("first hello with window %d: %v", s.window, err)
	}
	for err == nil && len(s.prog) > 0 {
		switch s.next() % numOps {
		case opData:
			delta := int64(int8(s.next())) * int64(1+int(s.next()))
			off := uint64(max(int64(s.inNext)+delta, 0))
			err = s.deliver(frame{typ: frameData, offset: off, data: theirBytes(off, 1+s.next16()%MaxPayload)})
		case opAck:
			err = s.ack()
		case opFin:
			off := uint64(max(int64(s.inNext)+int64(int8(s.next())), 0))
			err = s.deliver(frame{typ: frameFin, offset: off})
		case opRaw:
			err = s.rawFrames()
		case opWrite:
			s.write()
		case opRead:
			s.read()
		case opClose:
			c.Close()
			s.closed, s.unread = true, nil
		case opDrain:
			s.drain()
		case opResume:
			err = s.resume()
		}
		s.check()
	}
}

// deliver applies a frame from the peer, as the link reader does, and
// checks the outcome against the model.
func (s *sim) deliver(f frame) error {
	c := s.c
	c.mu.Lock()
	wantErr := s.expect(f)
	err := c.handleLocked(f)
	if err != nil {
		c.failLocked(err)
	}
	c.mu.Unlock()
	if (err != nil) != wantErr {
		s.t.Fatalf("%q frame at %d (%d bytes), %d received: error %v, want an error: %v", f.typ, f.offset, len(f.data), s.inNext, err, wantErr)
	}
	return err
}

// expect applies f to the model and reports whether it must end the
// session. Call with c.mu held (it reads what this end has sent).
func (s *sim) expect(f frame) bool {
	switch f.typ {
	case frameData:
		end := f.offset + uint64(len(f.data))
		switch {
		case s.finIn || f.offset > s.inNext:
			return true
		case end <= s.inNext:
			return false
		}
		fresh := f.data[s.inNext-f.offset:]
		if !s.closed {
			if len(s.unread)+len(fresh) > s.c.cfg.Buffer {
				return true
			}
			s.unread = append(s.unread, fresh...)
		}
		s.inNext = end
	case frameFin:
		if s.finIn && f.offset+1 == s.inNext {
			return false
		}
		if s.finIn || f.offset != s.inNext {
			return true
		}
		s.finIn = true
		s.inNext++
	case frameAck:
		limit := s.wrote
		if s.closed {
			limit++
		}
		return f.offset > limit || f.offset > s.c.cursor
	default: // error, and hello in the middle of a link
		return true
	}
	return false
}

func (s *sim) ack() error {
	mode, n := s.next(), s.next16()
	s.c.mu.Lock()
	off := s.c.acked + 16*uint64(n)
	if mode%2 == 0 {
		off = s.c.cursor
	}
	s.c.mu.Unlock()
	return s.deliver(frame{typ: frameAck, offset: off})
}

// rawFrames feeds program bytes to the frame reader. Frames it decodes
// are applied; a decoding error or a cut frame would end the link only.
func (s *sim) rawFrames() error {
	n := min(s.next16(), len(s.prog))
	s.raw.Reset(s.prog[:n])
	s.prog = s.prog[n:]
	s.fr.r.Reset(&s.raw)
	for {
		f, err := s.fr.read()
		if err != nil {
			if err != io.EOF && err != io.ErrUnexpectedEOF && !errors.Is(err, ErrProtocol) {
				s.t.Fatalf("frame reader: %v", err)
			}
			return nil
		}
		if err := s.deliver(f); err != nil {
			return err
		}
	}
}

func (s *sim) write() {
	n := s.next16() * (1 + int(s.next()%64))
	c := s.c
	c.mu.Lock()
	room := max(min(c.cfg.Buffer, s.win)-c.out.len(), 0)
	c.mu.Unlock()
	var wrote int
	var err error
	for wrote < n && err == nil {
		var k int
		k, err = c.Write(ourBytes(s.wrote, min(n-wrote, ourLen)))
		wrote += k
		s.wrote += uint64(k)
	}
	var want error
	switch {
	case n == 0:
	case s.closed:
		want, room = net.ErrClosed, 0
	case s.finIn:
		want, room = errPeerClosed, 0
	case n > room:
		want = os.ErrDeadlineExceeded
	}
	if wrote != min(n, room) || !errors.Is(err, want) {
		s.t.Fatalf("Write of %d bytes with room for %d: wrote %d, %v; want %d, %v", n, room, wrote, err, min(n, room), want)
	}
}

func (s *sim) read() {
	p := make([]byte, 1+s.next16())
	n, err := s.c.Read(p)
	switch {
	case s.closed:
		if !errors.Is(err, net.ErrClosed) {
			s.t.Fatalf("Read after Close: %v, want net.ErrClosed", err)
		}
	case len(s.unread) > 0:
		k := min(len(p), len(s.unread))
		if err != nil || !bytes.Equal(p[:n], s.unread[:k]) {
			s.t.Fatalf("Read: %d bytes, %v; want the next %d bytes received", n, err, k)
		}
		s.unread = s.unread[k:]
	case s.finIn:
		if n != 0 || err != io.EOF {
			s.t.Fatalf("Read after the peer's FIN: %d, %v; want io.EOF", n, err)
		}
	default:
		if n != 0 || !errors.Is(err, os.ErrDeadlineExceeded) {
			s.t.Fatalf("Read with nothing received: %d, %v; want a deadline error", n, err)
		}
	}
}

// drain plays the link writer: it takes every frame that is due, and
// checks what it would put on the wire.
func (s *sim) drain() {
	c := s.c
	c.mu.Lock()
	defer c.mu.Unlock()
	for i := 0; ; i++ {
		if i > 2*c.cfg.Buffer/MaxPayload+4 {
			s.t.Fatal("the writer never runs out of frames")
		}
		b, ack, _ := c.nextFrameLocked(s.buf)
		if b == nil {
			return
		}
		f, rest, err := decodeFrame(b)
		if err != nil || len(rest) != 0 {
			s.t.Fatalf("the writer sent an undecodable frame: %v, %d bytes left", err, len(rest))
		}
		switch f.typ {
		case frameData:
			if f.offset < c.outBase || f.offset+uint64(len(f.data)) > c.outEnd {
				s.t.Fatalf("data at %d (%d bytes) outside the %d..%d held", f.offset, len(f.data), c.outBase, c.outEnd)
			}
			if !bytes.Equal(f.data, ourBytes(f.offset, len(f.data))) {
				s.t.Fatalf("data at %d (%d bytes) differs from what was written", f.offset, len(f.data))
			}
		case frameAck:
			if f.offset != ack || f.offset > c.consumed || f.offset <= c.ackSent {
				s.t.Fatalf("ack of %d (recorded as %d): %d consumed, %d already acknowledged", f.offset, ack, c.consumed, c.ackSent)
			}
		case frameFin:
			if !c.closed || f.offset != c.outEnd {
				s.t.Fatalf("FIN at %d; closed %v, %d written", f.offset, c.closed, c.outEnd)
			}
		default:
			s.t.Fatalf("the writer sent a %q frame", f.typ)
		}
		c.sentLocked(ack)
	}
}

// resume plays a drop and a new link: this end's hello, then the peer's.
func (s *sim) resume() error {
	mode, n := s.next(), s.next16()
	c := s.c
	c.mu.Lock()
	h := c.helloLocked(false)
	limit := c.outEnd
	if c.closed {
		limit++
	}
	var got uint64
	switch mode % 4 {
	case 0:
		got = c.outBase
	case 1:
		got = limit
	case 2:
		got = c.outBase + 64*uint64(n)
	case 3:
		got = c.outBase - uint64(n%256)
	}
	wantErr := got < c.outBase || got > limit
	err := c.resumeFromLocked(frame{typ: frameHello, token: c.token, offset: got, window: s.window})
	if err != nil {
		c.failLocked(err)
	}
	c.mu.Unlock()
	if h.offset != s.inNext {
		s.t.Fatalf("hello reports %d received, want %d", h.offset, s.inNext)
	}
	if (err != nil) != wantErr {
		s.t.Fatalf("peer reports %d received, this end holds %d..%d: %v, want an error: %v", got, h.offset, limit, err, wantErr)
	}
	return err
}

// check asserts the invariants that hold between operations.
func (s *sim) check() {
	c := s.c
	c.mu.Lock()
	defer c.mu.Unlock()
	b := c.cfg.Buffer
	switch {
	case c.in.len() > b, len(c.in.buf) > b:
		s.t.Fatalf("receive buffer holds %d bytes in %d, window %d", c.in.len(), len(c.in.buf), b)
	case c.out.len() > min(b, s.win), len(c.out.buf) > b:
		s.t.Fatalf("send buffer holds %d bytes in %d, window %d, peer's %d", c.out.len(), len(c.out.buf), b, s.win)
	case c.outEnd != s.wrote || c.outEnd-c.outBase != uint64(c.out.len()) || c.outBase != min(c.acked, c.outEnd):
		s.t.Fatalf("send side: %d written, buffer %d..%d holding %d, %d acknowledged", s.wrote, c.outBase, c.outEnd, c.out.len(), c.acked)
	case c.acked > c.outEnd+1 || c.ackSent > c.consumed:
		s.t.Fatalf("acknowledged %d of %d written; sent ack %d of %d consumed", c.acked, c.outEnd, c.ackSent, c.consumed)
	case c.inNext != s.inNext || c.finIn != s.finIn:
		s.t.Fatalf("received %d (FIN %v), want %d (FIN %v)", c.inNext, c.finIn, s.inNext, s.finIn)
	}
	pending := uint64(0) // the FIN, received and not read
	if c.finIn && c.consumed < c.inNext {
		pending = 1
	}
	if c.closed {
		if c.in.len() != 0 || c.consumed != c.inNext {
			s.t.Fatalf("closed: %d bytes unread, %d of %d consumed", c.in.len(), c.consumed, c.inNext)
		}
	} else if c.in.len() != len(s.unread) || c.consumed+uint64(c.in.len())+pending != c.inNext {
		s.t.Fatalf("%d bytes unread, want %d; %d consumed + %d unread + FIN %d != %d received", c.in.len(), len(s.unread), c.consumed, c.in.len(), pending, c.inNext)
	}
}
