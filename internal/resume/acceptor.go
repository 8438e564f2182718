package resume

import (
	"fmt"
	"io"
	"log/slog"
	"slices"
	"sync"
	"time"
)

// Acceptor is the server end's registry of sessions: it starts a session
// for each new client and hands a reconnecting client's link to the
// session it names. It owns the sessions' goroutines; Close aborts them
// and waits.
//
// Sessions start unconfirmed (see Conn.Confirm) and are counted apart from
// confirmed ones: at most Config.MaxUnconfirmed of them, the oldest ended
// when a new one would exceed that. Ending the oldest rather than refusing
// the newest keeps the door open to a real user while someone who cannot
// log in holds idle links: to push a user out they must start
// MaxUnconfirmed sessions while that user logs in.
type Acceptor struct {
	cfg Config
	log *slog.Logger

	mu          sync.Mutex
	sessions    map[[TokenLen]byte]*Conn // every live session, by token
	unconfirmed []*Conn                  // the unconfirmed sessions, oldest first
	confirmed   int                      // the confirmed sessions
	closed      bool
	wg          sync.WaitGroup
}

// NewAcceptor returns an Acceptor whose sessions use cfg.
func NewAcceptor(cfg Config) (*Acceptor, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	return &Acceptor{cfg: cfg, log: cfg.Logger.With("component", "resume"), sessions: make(map[[TokenLen]byte]*Conn)}, nil
}

// Attach reads the client's hello on link, a freshly connected byte
// stream, within Config.HandshakeTimeout. For a new session it returns the
// session's Conn, for the caller to serve once. For a returning client it
// gives link to its session and returns nil. An unknown session, or a
// malformed hello, is answered with an error frame and an error.
func (a *Acceptor) Attach(link io.ReadWriteCloser) (*Conn, error) {
	fr := newFrameReader(link)
	var h frame
	err := bounded(link, a.cfg.HandshakeTimeout, func() error {
		var err error
		h, err = fr.read()
		return err
	})
	if err != nil {
		link.Close()
		return nil, fmt.Errorf("read hello: %w", err)
	}
	if h.typ != frameHello {
		return nil, a.refuse(link, fmt.Errorf("%w: %q frame instead of hello", ErrProtocol, h.typ))
	}
	att := attachment{link: link, fr: fr, hello: h}
	a.mu.Lock()
	if a.closed {
		a.mu.Unlock()
		return nil, a.refuse(link, fmt.Errorf("the agent is shutting down"))
	}
	s := a.sessions[h.token]
	if h.flags&flagNew != 0 {
		if s != nil {
			a.mu.Unlock()
			return nil, a.refuse(link, fmt.Errorf("%w: session token already in use", ErrProtocol))
		}
		if a.confirmed >= a.cfg.MaxSessions {
			a.mu.Unlock()
			return nil, a.refuse(link, fmt.Errorf("the agent already holds %d sessions; close some and retry", a.cfg.MaxSessions))
		}
		if len(a.unconfirmed) >= a.cfg.MaxUnconfirmed {
			a.evictLocked()
		}
		c := newConn(a.cfg, h.token, false)
		c.attach = make(chan attachment)
		c.onDone = func() { a.remove(c) }
		c.onConfirm = func() { a.confirm(c) }
		a.sessions[h.token] = c
		a.unconfirmed = append(a.unconfirmed, c)
		a.wg.Add(1)
		a.mu.Unlock()
		go func() {
			defer a.wg.Done()
			c.supervise(nil, nil, &att)
		}()
		return c, nil
	}
	if i := slices.Index(a.unconfirmed, s); s != nil && i >= 0 {
		// Nobody logged in on this session, so it ends with its first
		// link, and a client coming back means that link is lost, even
		// if this end has not noticed yet: end it now, as the link's drop
		// would, rather than let the client's link replace it.
		a.unconfirmed = slices.Delete(a.unconfirmed, i, i+1)
		delete(a.sessions, s.token)
		s.fail(fmt.Errorf("%w: its client reconnected", ErrUnconfirmed))
		s = nil
	}
	a.mu.Unlock()
	if s == nil {
		return nil, a.refuse(link, fmt.Errorf("no such session: it expired, or the agent restarted; start a new connection"))
	}
	select {
	case s.attach <- att:
		return nil, nil
	case <-s.done:
		return nil, a.refuse(link, fmt.Errorf("the session has ended; start a new connection"))
	}
}

// refuse tells the client why, closes link, and returns err.
func (a *Acceptor) refuse(link io.ReadWriteCloser, err error) error {
	reason := err.Error()
	if len(reason) > maxReason {
		reason = reason[:maxReason]
	}
	bounded(link, a.cfg.HandshakeTimeout, func() error {
		_, err := link.Write(appendFrame(nil, frame{typ: frameError, data: []byte(reason)}))
		return err
	})
	link.Close()
	return err
}

// evictLocked ends the oldest unconfirmed session to make room for a new
// one. Call with a.mu held.
func (a *Acceptor) evictLocked() {
	old := a.unconfirmed[0]
	a.unconfirmed = slices.Delete(a.unconfirmed, 0, 1)
	delete(a.sessions, old.token)
	a.log.Info("too many sessions waiting for a login; ending the oldest", "max", a.cfg.MaxUnconfirmed)
	old.fail(fmt.Errorf("%w: %d newer sessions were waiting for a login", ErrUnconfirmed, a.cfg.MaxUnconfirmed))
}

// confirm moves c to the confirmed sessions, if it is still unconfirmed
// and live.
func (a *Acceptor) confirm(c *Conn) {
	a.mu.Lock()
	defer a.mu.Unlock()
	i := slices.Index(a.unconfirmed, c)
	if i < 0 {
		return
	}
	a.unconfirmed = slices.Delete(a.unconfirmed, i, i+1)
	a.confirmed++
	c.mu.Lock()
	c.confirmed = true
	c.mu.Unlock()
}

func (a *Acceptor) remove(c *Conn) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.sessions[c.token] != c {
		return // evicted
	}
	delete(a.sessions, c.token)
	if i := slices.Index(a.unconfirmed, c); i >= 0 {
		a.unconfirmed = slices.Delete(a.unconfirmed, i, i+1)
	} else {
		a.confirmed--
	}
}

// Len is the number of live sessions.
func (a *Acceptor) Len() int {
	a.mu.Lock()
	defer a.mu.Unlock()
	return len(a.sessions)
}

// Shutdown refuses new sessions, closes every session gracefully (see
// Conn.Close) and waits, at most timeout, for them to deliver what they
// hold; then it aborts what is left and waits for it.
func (a *Acceptor) Shutdown(timeout time.Duration) {
	a.mu.Lock()
	a.closed = true
	conns := make([]*Conn, 0, len(a.sessions))
	for _, c := range a.sessions {
		conns = append(conns, c)
	}
	a.mu.Unlock()
	t := time.NewTimer(timeout)
	defer t.Stop()
	for _, c := range conns {
		c.Close()
	}
	for _, c := range conns {
		select {
		case <-c.Done():
		case <-t.C:
			a.Close()
			return
		}
	}
	a.Close()
}

// Close refuses new links, aborts every session and waits for them.
func (a *Acceptor) Close() {
	a.mu.Lock()
	a.closed = true
	for _, c := range a.sessions {
		c.Abort()
	}
	a.mu.Unlock()
	a.wg.Wait()
}
