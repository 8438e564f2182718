// Package resume makes a byte stream survive the loss of the connection
// carrying it. Both ends number the bytes they send, acknowledge what their
// reader has consumed, and keep what the peer has not acknowledged in a
// bounded buffer; when the link drops, the client end dials a new one, the
// two exchange how much each has received, and each replays from there.
// The stream inside (SSH) sees a pause, never a lost or repeated byte.
//
// A Conn is a net.Conn. The client end makes one with Dial, or with
// DialEarly, which sends the first bytes behind its hello instead of a
// round trip after it; the server end
// (the agent) gets new sessions from an Acceptor, which also matches a
// reconnecting client to its existing session by the session token in its
// hello. A server-end session waits out a dropped link only once the
// stream inside has authenticated its peer and said so (Conn.Confirm), so
// that someone who can reach the server end but cannot log in cannot fill
// its sessions. Links are plain byte streams (io.ReadWriteCloser): WebSocket
// adapts a WebSocket, tests use in-memory pipes. WebSocket is left out of
// js/wasm builds (coder/websocket's browser side lacks what it needs); the
// browser terminal (package webterm) adapts the browser's WebSocket itself. The relay between the two
// ends copies bytes and never needs this package.
//
// It is not a security layer: the session token keeps honest clients
// apart, but the stream it carries must bring its own authentication and
// integrity (SSH does).
package resume

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"sync"
	"time"
)

// Protocol is the WebSocket subprotocol that asks for a resumable stream.
const Protocol = "converge.resume.v1"

// Buffer sizes. SSH keeps up to a 2 MiB channel window in flight, so a
// smaller buffer would throttle it; twice that leaves room for SSH's own
// framing and a second busy channel.
const (
	MinBuffer     = 2 << 20
	DefaultBuffer = 4 << 20
)

// Errors a Conn's Read and Write return once the session is over.
var (
	// ErrExpired: the link stayed down for longer than the window.
	ErrExpired = errors.New("resume: the other end did not come back in time")
	// ErrPeerGone: the other end gave up on the session (its reason follows).
	ErrPeerGone = errors.New("resume: the other end ended the session")
	// ErrAborted: Abort was called or the owner shut down.
	ErrAborted = errors.New("resume: session aborted")
	// ErrUnconfirmed: a server-end session ended before Confirm, because
	// its link dropped or newer unconfirmed sessions took its place.
	ErrUnconfirmed = errors.New("resume: session ended before it was confirmed")
	// errPeerClosed: Write after the peer closed its end.
	errPeerClosed = errors.New("resume: the other end closed the stream")
)

// Config of resumable sessions. Both ends may use different values. The
// zero value of each field selects its default.
type Config struct {
	// Window is how long a session waits for a new link after its link
	// drops, and how long Close lingers to deliver what is unacknowledged.
	// Default 2 minutes.
	Window time.Duration
	// Buffer bounds, per direction, the bytes sent but not acknowledged and
	// the bytes received but not read. Writes block when it is full.
	// Default DefaultBuffer; at least MinBuffer.
	Buffer int
	// HandshakeTimeout bounds dialling a link and exchanging hellos on it.
	// Default 10s.
	HandshakeTimeout time.Duration
	// AckDelay is how long consumed bytes may wait before an
	// acknowledgement is sent; Buffer/4 consumed bytes are acknowledged at
	// once. Acknowledgements only free the peer's buffer, which the
	// quarter keeps from filling, so they can be lazy: each one costs a
	// wake-up at both ends and in the relay. Default 50ms.
	AckDelay time.Duration
	// MaxSessions bounds the confirmed sessions of an Acceptor (see
	// Conn.Confirm), so that abandoned sessions waiting out their window
	// hold bounded memory (each at most 2×Buffer): a new session is
	// refused while this many are confirmed. Default 256.
	MaxSessions int
	// MaxUnconfirmed bounds the sessions of an Acceptor that are not yet
	// confirmed: a new session beyond it ends the oldest unconfirmed one.
	// An Acceptor holds at most MaxSessions+MaxUnconfirmed sessions.
	// Default 32.
	MaxUnconfirmed int
	// Logger defaults to slog.Default().
	Logger *slog.Logger
}

// Validate checks c and fills in defaults.
func (c *Config) Validate() error {
	if c.Window == 0 {
		c.Window = 2 * time.Minute
	}
	if c.Window < 0 {
		return fmt.Errorf("resume window must be positive, got %v", c.Window)
	}
	if c.Buffer == 0 {
		c.Buffer = DefaultBuffer
	}
	if c.Buffer < MinBuffer || c.Buffer > 1<<30 {
		return fmt.Errorf("resume buffer of %d bytes: use %d (2 MiB, SSH's window) to 1 GiB", c.Buffer, MinBuffer)
	}
	if c.HandshakeTimeout <= 0 {
		c.HandshakeTimeout = 10 * time.Second
	}
	if c.AckDelay <= 0 {
		c.AckDelay = 50 * time.Millisecond
	}
	if c.MaxSessions <= 0 {
		c.MaxSessions = 256
	}
	if c.MaxUnconfirmed <= 0 {
		c.MaxUnconfirmed = 32
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	return nil
}

// Conn is one end of a resumable session, and a net.Conn. Read and Write
// may be called concurrently with each other and with Close. Write returns
// once the bytes are buffered (not acknowledged); it blocks while the
// buffer is full, however long the link is down, until the session ends or
// the write deadline passes. Read returns io.EOF after the peer's last
// byte once the peer has closed. Deadlines work as net.Conn documents.
//
// Close is graceful and does not block: the session lingers, resuming if
// need be, until the peer has acknowledged every byte written and the end
// of the stream, at most Config.Window. Done reports when it has ended;
// Abort ends it at once.
type Conn struct {
	cfg         Config
	log         *slog.Logger
	token       [TokenLen]byte
	client      bool
	redial      func(ctx context.Context) (io.ReadWriteCloser, error)
	attach      chan attachment // server end: new links for this session
	abortCtx    context.Context // ends on Abort
	abortCancel context.CancelFunc
	onDone      func()
	onConfirm   func() // server end: tells the Acceptor
	// answered is closed when the server end answers a new session's
	// hello (client end); earlyTimer ends the session if it does not.
	answered   chan struct{}
	earlyTimer *time.Timer

	mu sync.Mutex
	// Who waits for what (see wake): Read and Write on changed, the link
	// writer on kick, the link's supervisor on linkChanged.
	changed     chan struct{} // closed and replaced when Read or Write may go on
	kick        chan struct{} // buffered 1: the writer may have frames to send
	linkChanged chan struct{} // closed and replaced when the session may have ended

	out     ring
	outBase uint64 // offset of out's first byte: what the peer consumed
	outEnd  uint64 // offset after the last byte written
	acked   uint64 // highest acknowledgement received (outEnd+1 once the FIN is consumed)
	cursor  uint64 // next offset to send on the current link
	peerWin int    // the peer's receive buffer
	in      ring
	// A Read waiting for bytes lends its buffer: data arriving while the
	// ring is empty is copied straight into it, one copy instead of two.
	lent     []byte // the waiting Read's buffer, or nil
	lentN    int    // bytes received into lent, not yet consumed
	inNext   uint64 // offset after the last byte (or FIN) received
	consumed uint64 // bytes (and FIN) read, or dropped after Close
	finIn    bool   // the peer's FIN was received (at inNext-1)
	ackSent  uint64
	ackDue   time.Time // when a pending small acknowledgement goes out
	closed   bool      // Close called; a FIN follows outEnd
	closedAt time.Time
	err      error // why the session ended
	// confirmed: the stream inside authenticated its peer, so a dropped
	// link is waited for (always true on the client end). See Confirm.
	confirmed bool
	// early: a client end that started a session with DialEarly and has
	// not read the server end's answer yet.
	early    bool
	rdl, wdl time.Time

	done chan struct{}
}

// attachment is a new link for a server-end session, with the client's
// hello and the reader that read it (which may hold more frames).
type attachment struct {
	link  io.ReadWriteCloser
	fr    *frameReader
	hello frame
}

func newConn(cfg Config, token [TokenLen]byte, client bool) *Conn {
	c := &Conn{
		cfg:         cfg,
		token:       token,
		client:      client,
		confirmed:   client,
		changed:     make(chan struct{}),
		kick:        make(chan struct{}, 1),
		linkChanged: make(chan struct{}),
		done:        make(chan struct{}),
		out:         ring{max: cfg.Buffer},
		in:          ring{max: cfg.Buffer},
	}
	c.abortCtx, c.abortCancel = context.WithCancel(context.Background())
	side := "server"
	if client {
		side = "client"
	}
	c.log = cfg.Logger.With("component", "resume", "side", side, "session", fmt.Sprintf("%x", token[:4]))
	return c
}

// Whom wake wakes.
const (
	wakeIO     = 1 << iota // Read and Write waiting in waitLocked
	wakeWriter             // the link writer (writeLoop)
	wakeLink               // the link supervisor (runLink)
	wakeAll    = wakeIO | wakeWriter | wakeLink
)

// wake tells the waiters in who that the state changed. Only those whose
// condition may have changed are woken: a data frame wakes a reader, not
// the writer or the supervisor, so moving bytes costs no needless
// goroutine switches. Call with mu held.
func (c *Conn) wake(who int) {
	if who&wakeIO != 0 {
		close(c.changed)
		c.changed = make(chan struct{})
	}
	if who&wakeWriter != 0 {
		select {
		case c.kick <- struct{}{}:
		default: // a kick is already pending
		}
	}
	if who&wakeLink != 0 {
		close(c.linkChanged)
		c.linkChanged = make(chan struct{})
	}
}

// waitLocked releases mu until something changes or deadline (if set)
// passes, then takes it again. It reports whether the deadline passed.
func (c *Conn) waitLocked(deadline time.Time) bool {
	if !deadline.IsZero() && !time.Now().Before(deadline) {
		return true
	}
	ch := c.changed
	c.mu.Unlock()
	var timeout <-chan time.Time
	if !deadline.IsZero() {
		t := time.NewTimer(time.Until(deadline))
		defer t.Stop()
		timeout = t.C
	}
	select {
	case <-ch:
	case <-timeout:
	}
	c.mu.Lock()
	return false
}

// Read reads bytes in order, each exactly once.
func (c *Conn) Read(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for {
		switch {
		case c.closed:
			return 0, net.ErrClosed
		case c.in.len() > 0:
			if len(p) == 0 {
				return 0, nil
			}
			n := c.in.read(p)
			c.consumedLocked(uint64(n))
			return n, nil
		case c.finIn:
			if c.consumed < c.inNext {
				c.consumedLocked(1) // the FIN
			}
			return 0, io.EOF
		case c.err != nil:
			return 0, c.err
		}
		lending := len(p) > 0 && c.lent == nil
		if lending {
			c.lent, c.lentN = p, 0
		}
		timedOut := c.waitLocked(c.rdl)
		if lending {
			n := c.lentN
			c.lent, c.lentN = nil, 0
			if n > 0 && !c.closed { // Close consumed (dropped) them already
				c.consumedLocked(uint64(n))
				return n, nil
			}
		}
		if timedOut {
			return 0, os.ErrDeadlineExceeded
		}
	}
}

// consumedLocked records n more bytes consumed and schedules their
// acknowledgement.
func (c *Conn) consumedLocked(n uint64) {
	c.consumed += n
	due := c.ackDue
	if c.consumed-c.ackSent >= uint64(c.cfg.Buffer/4) || c.closed || c.finIn {
		c.ackDue = time.Now()
	} else if c.ackDue.IsZero() {
		c.ackDue = time.Now().Add(c.cfg.AckDelay)
	}
	if c.ackDue != due { // otherwise the writer already waits for it
		c.wake(wakeWriter)
	}
}

// Write buffers p for sending. See Conn for blocking.
func (c *Conn) Write(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	n := 0
	for len(p) > 0 {
		switch {
		case c.closed:
			return n, net.ErrClosed
		case c.err != nil:
			return n, c.err
		case c.finIn:
			return n, errPeerClosed
		}
		room := min(c.cfg.Buffer, c.peerWin) - c.out.len()
		if room > 0 {
			k := c.out.write(p[:min(room, len(p))])
			c.outEnd += uint64(k)
			n += k
			p = p[k:]
			c.wake(wakeWriter)
			continue
		}
		if c.waitLocked(c.wdl) {
			return n, os.ErrDeadlineExceeded
		}
	}
	return n, nil
}

// Close ends the stream gracefully: the peer reads what was written, then
// io.EOF. Unread bytes are dropped. Close does not wait; see Done.
func (c *Conn) Close() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return nil
	}
	c.closed = true
	c.closedAt = time.Now()
	c.in.discard(c.in.len())
	if c.consumed < c.inNext {
		c.consumedLocked(c.inNext - c.consumed)
	}
	c.wake(wakeAll)
	return nil
}

// Abort ends the session at once, without delivering what is pending.
func (c *Conn) Abort() {
	c.abortCancel()
}

// Confirm tells the server end that the stream it carries has
// authenticated its peer; the agent calls it once an SSH login succeeds.
// Until then the session is unconfirmed: it ends as soon as its link
// drops instead of waiting the window for the client to come back, it
// lingers after Close at most Config.HandshakeTimeout, and its Acceptor
// ends the oldest unconfirmed sessions beyond Config.MaxUnconfirmed. So
// whoever can reach the server end but cannot log in cannot hold its
// resume slots. Client ends are born confirmed; Confirm on a client end,
// on an ended session, or twice, does nothing.
func (c *Conn) Confirm() {
	if c.onConfirm != nil {
		c.onConfirm()
	}
}

// isConfirmed reports whether a dropped link is worth waiting for.
func (c *Conn) isConfirmed() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.confirmed
}

// Done is closed when the session has ended: after a graceful finish, an
// expiry, an abort or a protocol error.
func (c *Conn) Done() <-chan struct{} { return c.done }

// Err is why the session ended: nil after a graceful finish, or before
// the session has ended.
func (c *Conn) Err() error {
	select {
	case <-c.done:
	default:
		return nil
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if errors.Is(c.err, errFinished) {
		return nil
	}
	return c.err
}

// Shutdown closes c and waits for the session to finish, until timeout;
// then it aborts it. It returns Err.
func (c *Conn) Shutdown(timeout time.Duration) error {
	c.Close()
	t := time.NewTimer(timeout)
	defer t.Stop()
	select {
	case <-c.done:
	case <-t.C:
		c.Abort()
		<-c.done
	}
	return c.Err()
}

// SetDeadline sets the read and write deadlines.
func (c *Conn) SetDeadline(t time.Time) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.setDeadlinesLocked(t, t)
	return nil
}

// SetReadDeadline sets the read deadline.
func (c *Conn) SetReadDeadline(t time.Time) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.setDeadlinesLocked(t, c.wdl)
	return nil
}

// SetWriteDeadline sets the write deadline.
func (c *Conn) SetWriteDeadline(t time.Time) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.setDeadlinesLocked(c.rdl, t)
	return nil
}

// setDeadlinesLocked sets the deadlines and wakes Read and Write to heed
// them, if they changed: an SSH server sets the same deadline before
// every read and write (gliderlabs/ssh, with no timeouts: none), and a
// wake each time would cost the waiting reader a goroutine switch per
// packet.
func (c *Conn) setDeadlinesLocked(rdl, wdl time.Time) {
	if rdl.Equal(c.rdl) && wdl.Equal(c.wdl) {
		return
	}
	c.rdl, c.wdl = rdl, wdl
	c.wake(wakeIO)
}

// LocalAddr and RemoteAddr name the session; a resumable stream has no
// single network address.
func (c *Conn) LocalAddr() net.Addr  { return addr(fmt.Sprintf("resume:%x", c.token[:4])) }
func (c *Conn) RemoteAddr() net.Addr { return addr(fmt.Sprintf("resume:%x", c.token[:4])) }

type addr string

func (addr) Network() string  { return "resume" }
func (a addr) String() string { return string(a) }

// errFinished marks a graceful end internally.
var errFinished = errors.New("resume: session finished")

// finishedLocked reports whether a closed session has nothing left to do:
// the peer consumed every byte and the FIN, and the peer's FIN (if it
// closed) is acknowledged on the wire.
func (c *Conn) finishedLocked() bool {
	return c.closed && c.acked == c.outEnd+1 && c.finIn && c.ackSent == c.inNext
}

// failLocked ends the session with err, if it has not ended yet.
func (c *Conn) failLocked(err error) {
	if c.err == nil {
		c.err = err
		c.wake(wakeAll)
	}
}

// handleLocked applies one frame received on the current link.
func (c *Conn) handleLocked(f frame) error {
	if c.early && f.typ != frameHello && f.typ != frameError {
		return fmt.Errorf("%w: %q frame before the answer to the hello", ErrProtocol, f.typ)
	}
	switch f.typ {
	case frameData:
		end := f.offset + uint64(len(f.data))
		switch {
		case c.finIn:
			return fmt.Errorf("%w: data after the end of the stream", ErrProtocol)
		case f.offset > c.inNext:
			return fmt.Errorf("%w: data at offset %d, expected %d (bytes missing)", ErrProtocol, f.offset, c.inNext)
		case end <= c.inNext:
			return nil // a replay of what we have
		}
		fresh := f.data[c.inNext-f.offset:]
		if c.closed {
			c.inNext += uint64(len(fresh))
			c.consumedLocked(uint64(len(fresh)))
			return nil
		}
		if free := c.in.free() - c.lentN; len(fresh) > free {
			return fmt.Errorf("%w: the peer sent %d bytes beyond the %d-byte window", ErrProtocol, len(fresh)-free, c.cfg.Buffer)
		}
		if c.lent != nil && c.in.len() == 0 { // in order: nothing older is waiting in the ring
			k := copy(c.lent[c.lentN:], fresh)
			c.lentN += k
			c.inNext += uint64(k)
			fresh = fresh[k:]
		}
		c.in.write(fresh)
		c.inNext += uint64(len(fresh))
		c.wake(wakeIO)
	case frameFin:
		switch {
		case c.finIn && f.offset+1 == c.inNext:
			return nil // replayed
		case c.finIn || f.offset != c.inNext:
			return fmt.Errorf("%w: end of stream at offset %d, expected %d", ErrProtocol, f.offset, c.inNext)
		}
		c.finIn = true
		c.inNext++
		if c.closed {
			c.consumedLocked(1)
		}
		c.wake(wakeAll)
	case frameAck:
		limit := c.outEnd
		if c.closed {
			limit++
		}
		if f.offset > limit || f.offset > c.cursor {
			return fmt.Errorf("%w: acknowledgement of %d bytes, only %d sent", ErrProtocol, f.offset, min(limit, c.cursor))
		}
		if f.offset <= c.acked {
			return nil
		}
		c.acked = f.offset
		if nb := min(c.acked, c.outEnd); nb > c.outBase {
			c.out.discard(int(nb - c.outBase))
			c.outBase = nb
		}
		c.wake(wakeAll)
	case frameError:
		return fmt.Errorf("%w: %s", ErrPeerGone, f.data)
	case frameHello:
		if c.early {
			return c.answeredLocked(f)
		}
		return fmt.Errorf("%w: hello in the middle of a link", ErrProtocol)
	}
	return nil
}

// nextFrameLocked encodes into buf (capacity headerLen+maxBody) the next
// frame the writer should send on the current link. ack is the
// acknowledgement the frame carries (0 for other frames), for the writer to
// record once it is on the wire. With no frame to send it returns nil and
// how long until a pending acknowledgement is due (0: wait for a change).
func (c *Conn) nextFrameLocked(buf []byte) (b []byte, ack uint64, wait time.Duration) {
	now := time.Now()
	if c.consumed > c.ackSent && (c.consumed-c.ackSent >= uint64(c.cfg.Buffer/4) || !now.Before(c.ackDue)) {
		return appendFrame(buf[:0], frame{typ: frameAck, offset: c.consumed}), c.consumed, 0
	}
	if c.cursor < c.outBase {
		c.cursor = c.outBase
	}
	if c.cursor < c.outEnd {
		// The cursor moves before the write: the peer may acknowledge these
		// bytes before the writer is scheduled again. A failed write kills
		// the link, and the next hello resets the cursor.
		n := int(min(c.outEnd-c.cursor, MaxPayload))
		b = buf[:headerLen+8+n]
		b[0] = frameData
		binary.BigEndian.PutUint32(b[1:], uint32(8+n))
		binary.BigEndian.PutUint64(b[headerLen:], c.cursor)
		c.out.peek(int(c.cursor-c.outBase), b[headerLen+8:])
		c.cursor += uint64(n)
		return b, 0, 0
	}
	if c.closed && c.cursor == c.outEnd {
		c.cursor++
		return appendFrame(buf[:0], frame{typ: frameFin, offset: c.outEnd}), 0, 0
	}
	if c.consumed > c.ackSent {
		return nil, 0, c.ackDue.Sub(now)
	}
	return nil, 0, 0
}
