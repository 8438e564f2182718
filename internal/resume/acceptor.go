package resume

import (
	"fmt"
	"io"
	"log/slog"
	"sync"
	"time"
)

// Acceptor is the server end's registry of sessions: it starts a session
// for each new client and hands a reconnecting client's link to the
// session it names. It owns the sessions' goroutines; Close aborts them
// and waits.
type Acceptor struct {
	cfg Config
	log *slog.Logger

	mu       sync.Mutex
	sessions map[[TokenLen]byte]*Conn
	closed   bool
	wg       sync.WaitGroup
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
		if len(a.sessions) >= a.cfg.MaxSessions {
			a.mu.Unlock()
			return nil, a.refuse(link, fmt.Errorf("the agent already holds %d sessions; close some and retry", a.cfg.MaxSessions))
		}
		c := newConn(a.cfg, h.token, false)
		c.attach = make(chan attachment)
		c.onDone = func() { a.remove(c) }
		a.sessions[h.token] = c
		a.wg.Add(1)
		a.mu.Unlock()
		go func() {
			defer a.wg.Done()
			c.supervise(nil, nil, &att)
		}()
		return c, nil
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

func (a *Acceptor) remove(c *Conn) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.sessions[c.token] == c {
		delete(a.sessions, c.token)
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
