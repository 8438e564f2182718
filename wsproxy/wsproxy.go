// Package wsproxy is the user's side of Converge: it dials a client
// WebSocket (ws[s]://host/client/ID) and pumps bytes between it and stdio
// (an ssh ProxyCommand) or accepted TCP connections (tcptows).
//
// It knows nothing of SSH: any byte stream works. By default it asks for a
// resumable stream (internal/resume), so that a dropped network, a lost
// agent link or a restarted server costs a pause instead of the session;
// against an agent that does not offer it, the stream is plain.
package wsproxy

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"sync"
	"syscall"
	"time"

	"github.com/converge-ci/converge/internal/leg"
	"github.com/converge-ci/converge/internal/rawio"
	"github.com/converge-ci/converge/internal/resume"
	"github.com/converge-ci/converge/internal/splice"
	"github.com/converge-ci/converge/internal/wire"
	"github.com/converge-ci/converge/internal/wsconn"
)

// Target is a client URL checked once, ws[s]://host[:port][/prefix]/client/ID:
// where Dial, Stdio and Serve connect. Make one with ParseTarget; the zero
// Target is refused.
type Target struct {
	url string
}

// ParseTarget checks a client URL given by a user and reports what is
// wrong with it in words they can act on.
func ParseTarget(raw string) (Target, error) {
	u, err := wsconn.ParseURL(raw)
	if err != nil {
		return Target{}, err
	}
	if _, err := wire.ClientID(u.Path); err != nil {
		return Target{}, fmt.Errorf("bad URL %q: %w", raw, err)
	}
	return Target{url: raw}, nil
}

// PlainText reports whether the URL is plain ws:// to another machine,
// where anyone on the path can watch and cut the stream (what flows in it
// stays SSH's ciphertext); the command warns.
func (t Target) PlainText() bool { return wsconn.PlainTextRemote(t.url) }

// String returns the URL as the user gave it.
func (t Target) String() string { return t.url }

var errNoTarget = errors.New("wsproxy: no client URL; make the Target with ParseTarget")

// Options for Dial, Stdio and Serve. The zero value asks for resumption.
type Options struct {
	// NoResume asks for a plain stream: no resumption after a drop.
	NoResume bool
	// ResumeWindow is how long a resumable stream keeps trying to reconnect
	// after a drop. Default 2 minutes.
	ResumeWindow time.Duration
	// TLSSessions, when set, keeps the TLS sessions of wss:// links, so
	// that a later link, or a later run with the same cache (a
	// SessionFile), resumes one instead of a full handshake. Nil: each run
	// starts afresh.
	TLSSessions tls.ClientSessionCache
	// Logger reports reconnects. Default slog.Default().
	Logger *slog.Logger
	// Released, when set, is called by Stdio once the relay between the
	// user's side and the agent has ended, with the relay's error (nil
	// for a normal end), before a resumable stream lingers (at most 5 s)
	// to tell the agent that the session is over. The wsproxy command
	// reports the error there and lets go of its standard error, so that
	// a program waiting for the end of that stream (one capturing ssh's
	// stderr, which ssh passes on to its ProxyCommand) is not held up by
	// the farewell. Nil: nothing is called.
	Released func(err error)
	// Verified, when set, is called once, when the relay's answer to the
	// first link arrives (before any of the agent's bytes are read), with
	// what the relay says it verified about the agent's job (its
	// wire.VerifiedHeader, made safe to print) when it says anything.
	// It is the relay's word; the agent's host key, which ssh checks,
	// is the end-to-end one.
	Verified func(job string)
}

// lingerTimeout bounds how long a finished resumable stream waits to tell
// the agent it has ended (when the link is down at that moment).
const lingerTimeout = 5 * time.Second

// Dial connects to the target and returns the stream as a net.Conn. A
// refusal (unknown ID) is a *wsconn.RefusedError with the server's reason;
// the first connection is never retried. When the agent offers it, the
// stream is resumable (a *resume.Conn): after a drop it reconnects by
// itself within opts.ResumeWindow. Dial does not wait for the agent's
// answer to a resumable stream (see resume.DialEarly): an agent that
// refuses it ends the stream, and its reason is the error of the first
// Read. A resumable stream's links are raw streams (internal/leg),
// which the server splices in the kernel, when the server switches to
// them; otherwise, and for plain streams, WebSockets. A raw link's request
// goes out with the stream's first bytes (leg.DialOptions.Early), so a
// refusal by the server (unknown ID) is also the error of the first Read,
// and a server whose agent does not offer resumable streams ends the
// stream with an error that says so (use NoResume for such agents).
func Dial(ctx context.Context, t Target, opts Options) (net.Conn, error) {
	if t.url == "" {
		return nil, errNoTarget
	}
	response := verifiedHeader(opts.Verified)
	if opts.NoResume {
		c, err := wsconn.Dial(ctx, t.url, wsconn.Options{Response: response})
		if err != nil {
			return nil, err
		}
		// The stream outlives the dial context; Close ends it.
		return wsconn.NetConn(context.Background(), c), nil
	}
	d := &linkDialer{url: t.url, sessions: opts.TLSSessions, response: response}
	link, resumable, err := d.dial(ctx)
	d.response = nil // the first link's answer only
	if err != nil {
		return nil, err
	}
	if !resumable {
		return link.(net.Conn), nil
	}
	log := opts.Logger
	if log == nil {
		log = slog.Default()
	}
	redial := func(ctx context.Context) (io.ReadWriteCloser, error) {
		link, resumable, err := d.dial(ctx)
		if err != nil {
			return nil, err
		}
		if !resumable {
			link.Close()
			return nil, fmt.Errorf("the agent no longer offers resumable streams")
		}
		return link, nil
	}
	// Early: ssh's first bytes leave behind the hello, not a round trip
	// after it; a refusal by the agent then ends the stream instead of
	// failing Dial.
	rc, err := resume.DialEarly(link, redial, resume.Config{Window: opts.ResumeWindow, Logger: log.With("url", t.url)})
	if err != nil {
		return nil, err
	}
	return rc, nil
}

// linkDialer dials the links of one stream that asks to be resumable.
// Once the server has not switched to a raw stream, or switched to one
// for a plain stream, it dials WebSockets only: the fallback costs a
// round trip, and an answer is not likely to change within one stream.
type linkDialer struct {
	url      string
	sessions tls.ClientSessionCache
	raw      leg.Fallback      // for the stream's life
	response func(http.Header) // for the first link's switch; nil after
}

// dial opens a link: a resumable one (a raw stream, else a WebSocket),
// or, when the agent does not offer resumable streams, a plain WebSocket
// stream as a net.Conn.
func (d *linkDialer) dial(ctx context.Context) (link io.ReadWriteCloser, resumable bool, err error) {
	// Early: the request leaves with the hello and ssh's first bytes, not a
	// round trip ahead of them (a refusal then ends the stream, see Dial).
	c, err := leg.Dial(ctx, d.url, leg.DialOptions{Protocols: []string{resume.Protocol}, Raw: true, Early: true, Fallback: &d.raw, TLSSessions: d.sessions, Response: d.response})
	if err != nil {
		return nil, false, err
	}
	if c.Protocol() != resume.Protocol {
		// The stream outlives the dial context; Close ends it.
		return c.NetConn(context.Background()), false, nil
	}
	return resume.Link(c), true, nil
}

// verifiedHeader returns the Response callback that passes the first
// switch's wire.VerifiedHeader to verified (a raw stream refused for a
// plain one is followed by a WebSocket: one call for both); nil when
// verified is.
func verifiedHeader(verified func(string)) func(http.Header) {
	if verified == nil {
		return nil
	}
	var once sync.Once
	return func(h http.Header) {
		once.Do(func() {
			if v := h.Get(wire.VerifiedHeader); v != "" {
				verified(wsconn.Sanitize(v))
			}
		})
	}
}

// ID returns the rendezvous ID the target ends in.
func (t Target) ID() string {
	u, err := wsconn.ParseURL(t.url)
	if err != nil {
		return ""
	}
	id, _ := wire.ClientID(u.Path)
	return id
}

// finish waits, briefly, for a closed resumable stream to tell the agent
// it has ended; plain streams are done when closed.
func finish(conn net.Conn) {
	if rc, ok := conn.(*resume.Conn); ok {
		rc.Shutdown(lingerTimeout)
	}
}

// Stdio relays between in/out and the target until either side ends,
// then closes in and out. When the connection cannot be made it returns
// the error with in and out still open: ssh stops its ProxyCommand as soon
// as the command's stdout closes, so the caller must report why first.
func Stdio(ctx context.Context, t Target, in io.ReadCloser, out io.WriteCloser, opts Options) error {
	conn, err := Dial(ctx, t, opts)
	if err != nil {
		return err
	}
	stop := context.AfterFunc(ctx, func() { conn.Close() })
	defer stop()
	res := splice.Splice(newStdio(in, out), conn)
	if rc, ok := conn.(*resume.Conn); ok && res.Err == nil {
		// The user's side may end before the server's answer came: a
		// refusal (unknown ID) is still the outcome to report.
		select {
		case <-rc.Answered():
		case <-rc.Done():
			res.Err = rc.Err()
		}
	}
	if errors.Is(res.Err, leg.ErrNotOffered) {
		res.Err = fmt.Errorf("the agent does not offer resumable streams; run wsproxy with --no-resume: %w", res.Err)
	}
	if opts.Released != nil {
		opts.Released(res.Err)
	}
	finish(conn)
	return res.Err
}

// stdio is ssh's end of the relay: its input and output. On pipes (what
// ssh gives a ProxyCommand) it reads and writes with raw system calls
// (see internal/rawio), as the stream's own end does.
type stdio struct {
	in            io.ReadCloser
	out           io.WriteCloser
	rawIn, rawOut *rawio.FD // nil: through in and out
}

func newStdio(in io.ReadCloser, out io.WriteCloser) stdio {
	s := stdio{in: in, out: out}
	if f, ok := in.(*os.File); ok {
		s.rawIn = rawio.For(f)
	}
	if f, ok := out.(*os.File); ok {
		s.rawOut = rawio.For(f)
	}
	return s
}

func (s stdio) Read(p []byte) (int, error) {
	if s.rawIn != nil {
		return s.rawIn.Read(p)
	}
	return s.in.Read(p)
}

func (s stdio) Write(p []byte) (int, error) {
	if s.rawOut == nil {
		return s.out.Write(p)
	}
	n, err := s.rawOut.Write(p)
	if errors.Is(err, syscall.EPIPE) {
		// Whoever read our output (ssh) has gone: the stream ends, as
		// when it closes our input.
		err = net.ErrClosed
	}
	return n, err
}

func (s stdio) Close() error {
	return errors.Join(s.in.Close(), s.out.Close())
}

// Serve accepts TCP connections on ln and relays each through its own
// WebSocket to the target, until ctx ends. Then it closes ln and every
// relayed connection and waits for them.
func Serve(ctx context.Context, ln net.Listener, t Target, log *slog.Logger, opts Options) error {
	if t.url == "" {
		return errNoTarget
	}
	if opts.Logger == nil {
		opts.Logger = log
	}
	var wg sync.WaitGroup
	ctx, cancel := context.WithCancel(ctx)
	defer func() { cancel(); wg.Wait() }()
	stop := context.AfterFunc(ctx, func() { ln.Close() })
	defer stop()
	for {
		tc, err := ln.Accept()
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return fmt.Errorf("accept: %w", err)
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer tc.Close()
			wc, err := Dial(ctx, t, opts)
			if err != nil {
				log.Warn("connection refused", "from", tc.RemoteAddr().String(), "error", err)
				return
			}
			stopConn := context.AfterFunc(ctx, func() { wc.Close(); tc.Close() })
			defer stopConn()
			log.Info("connected", "from", tc.RemoteAddr().String())
			res := splice.Splice(tc, wc)
			finish(wc)
			log.Info("disconnected", "from", tc.RemoteAddr().String(), "sent", res.AToB, "received", res.BToA)
		}()
	}
}
