package resume

import (
	"context"
	crand "crypto/rand"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"sync"
	"time"
)

// Client reconnect backoff: doubling from redialMin to redialMax, jittered.
const (
	redialMin = 100 * time.Millisecond
	redialMax = 2 * time.Second
)

// earlyWindow is what a client end sends on a new session before the
// server end has answered: enough for what a protocol says first (SSH's
// version and key exchange offer fit many times over), and below any
// window a server end announces (MinBuffer), so that nothing sent early
// can overrun it.
const earlyWindow = MaxPayload

// Dial starts a new session over link, a freshly connected byte stream to
// the server end. After a drop, redial is called (with backoff, within
// Config.Window) for a new link to the same server end; its context ends
// when the attempt should be abandoned. Dial returns once the server end
// has answered, or an error (and closes link).
func Dial(link io.ReadWriteCloser, redial func(context.Context) (io.ReadWriteCloser, error), cfg Config) (*Conn, error) {
	c, err := DialEarly(link, redial, cfg)
	if err != nil {
		return nil, err
	}
	select {
	case <-c.answered:
		return c, nil
	case <-c.done:
		return nil, fmt.Errorf("start resumable session: %w", c.Err())
	}
}

// DialEarly is Dial without the wait for the server end's answer: it
// returns once its hello is written, and what the caller writes goes out
// at once behind it, up to earlyWindow bytes before the answer, so that
// the stream inside starts a round trip sooner. The server end reads the
// hello first and the early bytes after it on the same link, and answers
// before anything else; nothing is sent twice. If the answer is a
// refusal, or the link fails or stays silent for Config.HandshakeTimeout
// before it comes, the session ends (there is nothing to resume yet):
// Read and Write return why, and Err says it once Done is closed.
func DialEarly(link io.ReadWriteCloser, redial func(context.Context) (io.ReadWriteCloser, error), cfg Config) (*Conn, error) {
	if err := cfg.Validate(); err != nil {
		link.Close()
		return nil, err
	}
	var token [TokenLen]byte
	crand.Read(token[:])
	c := newConn(cfg, token, true)
	c.redial = redial
	c.early = true
	c.answered = make(chan struct{})
	c.peerWin = earlyWindow
	c.mu.Lock()
	h := c.helloLocked(true)
	c.mu.Unlock()
	err := bounded(link, cfg.HandshakeTimeout, func() error {
		_, err := link.Write(appendFrame(nil, h))
		return err
	})
	if err != nil {
		link.Close()
		return nil, fmt.Errorf("start resumable session: send hello: %w", err)
	}
	c.earlyTimer = time.AfterFunc(cfg.HandshakeTimeout, func() {
		c.mu.Lock()
		silent := c.early
		if silent {
			c.failLocked(fmt.Errorf("resume: the other end did not answer within %v", cfg.HandshakeTimeout))
		}
		c.mu.Unlock()
		if silent {
			link.Close()
		}
	})
	go c.supervise(link, newFrameReader(link), nil)
	return c, nil
}

// answeredLocked applies the server end's answer to the hello of a new
// session (see DialEarly). It arrives on the first link before any other
// frame, and what this end sent before it went down the same link behind
// the hello, so the cursor stays where it is: nothing is sent again.
func (c *Conn) answeredLocked(h frame) error {
	switch {
	case h.token != c.token:
		return fmt.Errorf("%w: hello for another session", ErrProtocol)
	case h.offset != 0:
		return fmt.Errorf("%w: the other end of a new session reports %d bytes received", ErrProtocol, h.offset)
	}
	cursor := c.cursor
	if err := c.resumeFromLocked(h); err != nil {
		return err
	}
	c.cursor = cursor
	c.early = false
	c.earlyTimer.Stop()
	close(c.answered)
	return nil
}

// bounded closes l if fn has not returned within d, so that reads and
// writes on links without deadlines cannot hang a handshake.
func bounded(l io.Closer, d time.Duration, fn func() error) error {
	t := time.AfterFunc(d, func() { l.Close() })
	err := fn()
	if !t.Stop() && err != nil {
		return fmt.Errorf("no answer within %v: %w", d, err)
	}
	return err
}

// helloLocked is this end's hello: the token and everything received so
// far. It must be built only after the previous link's reader has stopped,
// so that no byte counted here is delivered again.
//
// It also forgets which acknowledgements were sent: the last ones may have
// been lost with the old link, and a peer whose window they would have
// opened would wait for them forever. The first frame on the new link
// acknowledges everything consumed.
func (c *Conn) helloLocked(isNew bool) frame {
	c.ackSent = 0
	if c.consumed > 0 {
		c.ackDue = time.Now()
	}
	f := frame{typ: frameHello, token: c.token, offset: c.inNext, window: uint32(c.cfg.Buffer)}
	if isNew {
		f.flags = flagNew
	}
	return f
}

// resumeFromLocked applies the peer's hello: replay from what it received.
func (c *Conn) resumeFromLocked(h frame) error {
	limit := c.outEnd
	if c.closed {
		limit++
	}
	if h.offset < c.outBase || h.offset > limit {
		return fmt.Errorf("%w: the peer received %d bytes, but this end holds bytes %d to %d", ErrProtocol, h.offset, c.outBase, limit)
	}
	if h.window < MaxPayload {
		return fmt.Errorf("%w: the peer's window of %d bytes is below one frame", ErrProtocol, h.window)
	}
	c.cursor = h.offset
	c.peerWin = int(min(h.window, 1<<30))
	c.wake(wakeAll)
	return nil
}

// clientHello sends this end's hello on l, a new link for a session that
// lost its last one, and applies the server end's answer.
func (c *Conn) clientHello(l io.ReadWriteCloser) (*frameReader, error) {
	fr := newFrameReader(l)
	err := bounded(l, c.cfg.HandshakeTimeout, func() error {
		c.mu.Lock()
		h := c.helloLocked(false)
		c.mu.Unlock()
		if _, err := l.Write(appendFrame(nil, h)); err != nil {
			return fmt.Errorf("send hello: %w", err)
		}
		f, err := fr.read()
		if err != nil {
			return fmt.Errorf("read hello: %w", err)
		}
		switch {
		case f.typ == frameError:
			return fmt.Errorf("%w: %s", ErrPeerGone, f.data)
		case f.typ != frameHello:
			return fmt.Errorf("%w: %q frame instead of hello", ErrProtocol, f.typ)
		case f.token != c.token:
			return fmt.Errorf("%w: hello for another session", ErrProtocol)
		}
		c.mu.Lock()
		defer c.mu.Unlock()
		return c.resumeFromLocked(f)
	})
	return fr, err
}

// serverHello applies a client's hello from a and answers it.
func (c *Conn) serverHello(a attachment) error {
	return bounded(a.link, c.cfg.HandshakeTimeout, func() error {
		c.mu.Lock()
		err := c.resumeFromLocked(a.hello)
		h := c.helloLocked(false)
		c.mu.Unlock()
		if err != nil {
			return err
		}
		if _, err := a.link.Write(appendFrame(nil, h)); err != nil {
			return fmt.Errorf("send hello: %w", err)
		}
		return nil
	})
}

// fatal reports whether err ends the session rather than only the link.
func fatal(err error) bool {
	return errors.Is(err, ErrProtocol) || errors.Is(err, ErrPeerGone)
}

// supervise runs the session: it serves each link until it fails, gets a
// new one (the client end dials, the server end waits for an attachment),
// and ends the session when it finishes, expires or is aborted.
func (c *Conn) supervise(l io.ReadWriteCloser, fr *frameReader, att *attachment) {
	defer func() {
		c.mu.Lock()
		c.failLocked(ErrAborted) // no-op when an error is already set
		err := c.err
		c.mu.Unlock()
		if errors.Is(err, errFinished) {
			c.log.Debug("session finished")
		} else {
			c.log.Info("session ended", "error", err)
		}
		close(c.done)
		if c.onDone != nil {
			c.onDone()
		}
	}()
	for {
		var lost error // why the last link (or its handshake) failed
		if att != nil {
			if err := c.serverHello(*att); err != nil {
				att.link.Close()
				if fatal(err) {
					c.fail(err)
					return
				}
				lost = fmt.Errorf("resume handshake: %w", err)
			} else {
				l, fr = att.link, att.fr
			}
			att = nil
		}
		if l != nil {
			next, err := c.runLink(l, fr)
			l, fr = nil, nil
			c.mu.Lock()
			if c.finishedLocked() {
				// The last acknowledgement made it just before the link
				// went down.
				c.failLocked(errFinished)
			}
			c.mu.Unlock()
			if c.over() {
				return
			}
			if next != nil {
				att = next
				continue
			}
			lost = err
		}
		if c.unanswered() {
			c.fail(fmt.Errorf("resume: the link failed before the other end answered: %w", lost))
			return
		}
		if !c.isConfirmed() {
			// Nobody logged in on this stream: waiting the window for it
			// would let anyone who can reach us fill our slots.
			c.fail(fmt.Errorf("%w: its link failed: %v", ErrUnconfirmed, lost))
			return
		}
		c.log.Info("link lost; resuming", "error", lost)
		var err error
		if c.client {
			l, fr, err = c.redialLoop()
		} else {
			att, err = c.awaitAttach()
		}
		if err != nil {
			c.fail(err)
			return
		}
		if c.client {
			c.log.Info("resumed")
		}
	}
}

// Answered is closed once the server end has answered the hello of the
// client end's new session (see DialEarly); it stays open on a session
// that ends before the answer, and on a server end.
func (c *Conn) Answered() <-chan struct{} { return c.answered }

// unanswered reports whether a new session's first link has not brought
// the server end's answer (see DialEarly).
func (c *Conn) unanswered() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.early
}

// finished reports whether the session ended gracefully.
func (c *Conn) finished() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return errors.Is(c.err, errFinished)
}

func (c *Conn) fail(err error) {
	c.mu.Lock()
	c.failLocked(err)
	c.mu.Unlock()
}

// over reports whether the session has ended.
func (c *Conn) over() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.err != nil
}

// giveUpAt is when the session expires if it gets no link: the window
// after the link dropped, or after Close, whichever is earlier.
func (c *Conn) giveUpAt(droppedAt time.Time) time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	t := droppedAt.Add(c.cfg.Window)
	if c.closed {
		if lt := c.closedAt.Add(c.cfg.Window); lt.Before(t) {
			t = lt
		}
	}
	return t
}

// runLink serves link l until it fails, the session ends, or (server end)
// another link replaces it, which it then returns. It closes l and waits
// for the link's reader and writer before returning.
func (c *Conn) runLink(l io.ReadWriteCloser, fr *frameReader) (*attachment, error) {
	stop := make(chan struct{})
	errs := make(chan error, 2)
	var wg sync.WaitGroup
	var idle time.Duration // how long the writer may send nothing (0: no limit)
	if k, ok := l.(interface{ idleAck() time.Duration }); ok {
		idle = k.idleAck()
	}
	wg.Add(2)
	go func() { defer wg.Done(); errs <- c.readLoop(fr) }()
	go func() { defer wg.Done(); errs <- c.writeLoop(l, stop, idle) }()
	defer func() {
		close(stop)
		if c.finished() {
			// Close in order, so the last acknowledgement is not lost to
			// a reset; links that cannot just close.
			if g, ok := l.(interface{ closeGracefully() }); ok {
				g.closeGracefully()
			}
		}
		l.Close()
		wg.Wait()
	}()
	var linger <-chan time.Time // set once the session is closed
	lingerFor := c.cfg.Window
	for {
		c.mu.Lock()
		if c.finishedLocked() {
			c.failLocked(errFinished)
		}
		ended, ch, closed, closedAt, confirmed := c.err != nil, c.linkChanged, c.closed, c.closedAt, c.confirmed
		c.mu.Unlock()
		if ended {
			return nil, nil
		}
		if closed && linger == nil {
			if !confirmed {
				lingerFor = min(lingerFor, c.cfg.HandshakeTimeout)
			}
			t := time.NewTimer(time.Until(closedAt.Add(lingerFor)))
			defer t.Stop()
			linger = t.C
		}
		select {
		case <-ch:
		case err := <-errs:
			return nil, err
		case a := <-c.attach: // nil channel on the client end
			c.log.Info("link replaced by a reconnecting client")
			return &a, nil
		case <-c.abortCtx.Done():
			c.fail(ErrAborted)
			return nil, nil
		case <-linger:
			c.fail(fmt.Errorf("%w: the other end did not acknowledge the end of the stream within %v", ErrExpired, lingerFor))
			return nil, nil
		}
	}
}

// readLoop applies the frames of one link. A frame that does not decode
// ends only the link: TCP and TLS do not corrupt bytes, so garbage means a
// relay forwarded the broken tail of a dying connection (see
// wsconn.CleanReads), and the bytes after the last good frame are replayed
// on the next link. A well-formed frame that breaks the protocol (a gap, an
// overrun window) ends the session.
func (c *Conn) readLoop(fr *frameReader) error {
	for {
		f, err := fr.read()
		if err != nil {
			return err
		}
		c.mu.Lock()
		err = c.handleLocked(f)
		c.mu.Unlock()
		if err != nil {
			if fatal(err) {
				c.fail(err)
			}
			return err
		}
	}
}

// writeLoop writes the session's frames to w until stop is closed or a
// write fails. With idle set, it repeats the last acknowledgement whenever
// it has written nothing for that long (a keepalive; see Stream).
func (c *Conn) writeLoop(w io.Writer, stop <-chan struct{}, idle time.Duration) error {
	buf := make([]byte, headerLen+maxBody) // grown for batches once a burst comes
	lastWrite := time.Now()
	timer := time.NewTimer(time.Hour) // one timer for every wait, not one per wait
	timer.Stop()
	defer timer.Stop()
	c.mu.Lock()
	for {
		select {
		case <-stop:
			c.mu.Unlock()
			return nil
		default:
		}
		if len(buf) < batchFrames*(headerLen+maxBody) && c.outEnd > c.cursor+MaxPayload {
			buf = make([]byte, batchFrames*(headerLen+maxBody))
		}
		b, ack, wait := c.nextBatchLocked(buf)
		if b == nil && idle > 0 {
			if left := time.Until(lastWrite.Add(idle)); left <= 0 {
				b, ack = appendFrame(buf[:0], frame{typ: frameAck, offset: c.consumed}), c.consumed
			} else if wait <= 0 || left < wait {
				wait = left
			}
		}
		if b == nil {
			ch := c.kick
			c.mu.Unlock()
			var due <-chan time.Time
			if wait > 0 {
				timer.Reset(wait)
				due = timer.C
			}
			select {
			case <-ch:
			case <-due:
			case <-stop:
			}
			timer.Stop() // since Go 1.23 a stopped timer delivers nothing stale
			c.mu.Lock()
			continue
		}
		c.mu.Unlock()
		if _, err := w.Write(b); err != nil {
			return err
		}
		lastWrite = time.Now()
		c.mu.Lock()
		c.sentLocked(ack)
	}
}

// batchFrames is how many frames one write to a link may carry. When the
// stream's writer runs ahead of the link (a burst of SSH packets once the
// peer opened its window), fewer and larger writes cost both ends and
// the relay between them fewer system calls and wake-ups.
const batchFrames = 4

// nextBatchLocked encodes into buf the frames due that fit, as
// nextFrameLocked does for one. An acknowledgement ends a batch, so that
// it is not repeated.
func (c *Conn) nextBatchLocked(buf []byte) (b []byte, ack uint64, wait time.Duration) {
	b, ack, wait = c.nextFrameLocked(buf)
	for b != nil && ack == 0 && cap(buf)-len(b) >= headerLen+maxBody {
		f, a, _ := c.nextFrameLocked(buf[len(b):])
		if f == nil {
			break
		}
		b, ack = buf[:len(b)+len(f)], a
	}
	return b, ack, wait
}

// sentLocked records that a frame carrying acknowledgement ack (0 for
// other frames) is on the wire.
func (c *Conn) sentLocked(ack uint64) {
	if ack > c.ackSent {
		c.ackSent = ack
		if c.ackSent == c.consumed {
			c.ackDue = time.Time{}
		}
		c.wake(wakeAll)
	}
}

// redialLoop gets the client end a new link, with backoff, until the
// window closes.
func (c *Conn) redialLoop() (io.ReadWriteCloser, *frameReader, error) {
	giveUp := c.giveUpAt(time.Now())
	backoff := redialMin
	for attempt := 1; ; attempt++ {
		dl := time.Now().Add(c.cfg.HandshakeTimeout)
		if giveUp.Before(dl) {
			dl = giveUp
		}
		ctx, cancel := context.WithDeadline(c.abortCtx, dl)
		l, err := c.redial(ctx)
		cancel()
		if err == nil {
			var fr *frameReader
			fr, err = c.clientHello(l)
			if err == nil {
				return l, fr, nil
			}
			l.Close()
			if fatal(err) {
				return nil, nil, err
			}
		}
		c.log.Debug("reconnect failed", "attempt", attempt, "error", err)
		wait := backoff/2 + rand.N(backoff/2+1)
		if left := time.Until(giveUp); left <= 0 {
			return nil, nil, fmt.Errorf("%w: no link within %v (last error: %v)", ErrExpired, c.cfg.Window, err)
		} else if wait > left {
			wait = left
		}
		t := time.NewTimer(wait)
		select {
		case <-c.abortCtx.Done():
			t.Stop()
			return nil, nil, ErrAborted
		case <-t.C:
		}
		backoff = min(backoff*2, redialMax)
	}
}

// awaitAttach waits, on the server end, for the client to come back.
func (c *Conn) awaitAttach() (*attachment, error) {
	t := time.NewTimer(time.Until(c.giveUpAt(time.Now())))
	defer t.Stop()
	select {
	case a := <-c.attach:
		return &a, nil
	case <-c.abortCtx.Done():
		return nil, ErrAborted
	case <-t.C:
		return nil, fmt.Errorf("%w: the client did not reconnect within %v", ErrExpired, c.cfg.Window)
	}
}
