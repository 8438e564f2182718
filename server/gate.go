package server

import (
	"encoding/binary"
	"io"
	"sync/atomic"
	"syscall"
)

// Between an agent's messages the server waits on its socket itself (in
// the idle poller, which costs no goroutine, or where there is none on a
// shallow goroutine, see wait), not inside the WebSocket library's read,
// which costs a deep stack (8 KiB once the herd of registrations has made
// the runtime start goroutines that large) and a context registration for
// every read; it calls the library only once bytes are there
// (docs/design.md, "Where an idle agent's memory goes"). Two things make
// that safe, both done by frameGate, which the library reads the
// connection through:
//
//   - nothing is left in the library's buffer when a message has been
//     read (a read never goes past the end of the frame being read), so
//     an empty socket means nothing is waiting;
//   - the library returns after a ping or pong too, not only after a data
//     message: the gate follows each control frame the agent sends (the
//     agent pings every 20 s) with an empty binary frame of its own
//     making, a nudge, which the control loop reads as "nothing" and goes
//     back to waiting. The library answers the ping as ever.
type frameGate struct {
	r     io.Reader       // the connection
	raw   syscall.RawConn // its socket, which wait waits on
	early []byte          // bytes read off the connection before the hand-over: given first
	// earlyLeft is len(early), read by wait: while any are left, a
	// message may be waiting in them.
	earlyLeft atomic.Int64
	// onClose, if set, is called when the connection has been closed
	// (see idlePoller).
	onClose atomic.Pointer[func()]

	hdr       [14]byte // the header being read: 2 bytes, then its extended length and mask
	have      int      // header bytes read
	left      int64    // payload bytes of the current frame not passed on yet
	control   bool     // the current frame is a ping or a pong
	inMessage bool     // a fragmented data message has begun and not ended: no nudge inside it
	nudge     int      // bytes of the nudge still to give (from the end of nudgeFrame)
}

// nudgeFrame is a final, empty, masked binary frame (mask key zero): a
// valid client frame, which the control protocol (text only) never sends.
var nudgeFrame = [6]byte{0x82, 0x80}

// The bits of a frame header (RFC 6455, section 5.2) the gate reads.
const (
	wsFin    = 0x80 // first byte: the message's last frame
	wsOpPing = 0x9  // first byte's low 4 bits: the opcode (0-2 data, 8 close)
	wsOpPong = 0xa
	wsMasked = 0x80 // second byte: a 4-byte mask key follows the length
	wsLen16  = 126  // second byte's low 7 bits: the length, or a 2-byte one follows,
	wsLen64  = 127  // or an 8-byte one
)

func newFrameGate(c io.Reader, raw syscall.RawConn, early []byte) *frameGate {
	g := &frameGate{r: c, raw: raw, early: early}
	g.earlyLeft.Store(int64(len(early)))
	return g
}

// from reads up to len(p) bytes: the early ones first, then the
// connection's.
func (g *frameGate) from(p []byte) (int, error) {
	if len(g.early) == 0 {
		return g.r.Read(p)
	}
	n := copy(p, g.early)
	g.early = g.early[n:]
	g.earlyLeft.Store(int64(len(g.early)))
	return n, nil
}

func (g *frameGate) Read(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	if g.nudge > 0 {
		n := copy(p, nudgeFrame[len(nudgeFrame)-g.nudge:])
		g.nudge -= n
		return n, nil
	}
	if g.left > 0 {
		n, err := g.from(p[:min(int64(len(p)), g.left)])
		g.left -= int64(n)
		if g.left == 0 && n > 0 {
			g.endFrame()
		}
		return n, err
	}
	n, err := g.from(p[:min(len(p), g.headerLen()-g.have)])
	copy(g.hdr[g.have:], p[:n])
	g.have += n
	if g.have >= 2 && g.have == g.headerLen() {
		g.startFrame()
	}
	return n, err
}

// headerLen is the length of the header being read, as far as its bytes
// read so far tell: 2 until the second byte is in.
func (g *frameGate) headerLen() int {
	if g.have < 2 {
		return 2
	}
	n := 2
	switch g.hdr[1] &^ wsMasked {
	case wsLen16:
		n += 2
	case wsLen64:
		n += 8
	}
	if g.hdr[1]&wsMasked != 0 {
		n += 4
	}
	return n
}

// startFrame takes in the complete header of a frame.
func (g *frameGate) startFrame() {
	op, fin := g.hdr[0]&0xf, g.hdr[0]&wsFin != 0
	switch g.hdr[1] &^ wsMasked {
	case wsLen16:
		g.left = int64(binary.BigEndian.Uint16(g.hdr[2:]))
	case wsLen64:
		g.left = int64(binary.BigEndian.Uint64(g.hdr[2:]) &^ (1 << 63))
	default:
		g.left = int64(g.hdr[1] &^ wsMasked)
	}
	g.have = 0
	g.control = op == wsOpPing || op == wsOpPong
	if op <= 0x2 { // data: text, binary or continuation
		g.inMessage = !fin
	}
	if g.left == 0 {
		g.endFrame()
	}
}

// endFrame follows a ping or pong, outside a fragmented message, with a
// nudge.
func (g *frameGate) endFrame() {
	if g.control && !g.inMessage {
		g.nudge = len(nudgeFrame)
	}
	g.control = false
}

// isNudge reports whether a message read through a frameGate is a nudge.
func isNudge(binary bool, b []byte) bool { return binary && len(b) == 0 }

// wait blocks until there is something to read, the connection has
// ended or failed, without reading any; on a shallow stack. Each wake is
// checked with a peek: a readiness left over from bytes already read
// does not count. An error shows in the read that follows.
func (g *frameGate) wait() {
	if !g.holdsEarly() {
		g.raw.Read(readable)
	}
}

// holdsEarly reports whether bytes read before the hand-over are still to
// be given: a message may be waiting in them, which no socket wait sees.
func (g *frameGate) holdsEarly() bool { return g.earlyLeft.Load() > 0 }
