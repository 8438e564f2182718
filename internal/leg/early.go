package leg

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"time"

	"github.com/converge-ci/converge/internal/rawio"
	"github.com/converge-ci/converge/internal/wire"
	"github.com/converge-ci/converge/internal/wsconn"
)

// EarlyLimit bounds the bytes a raw stream dialled with DialOptions.Early
// sends before the server's answer, and keeps until then: a resumable
// stream's hello and the start of its data (at most 64 KiB before the
// agent's answer, see internal/resume), with room to spare. A Write past
// it waits for the answer.
const EarlyLimit = 256 << 10

// errProxied: a proxy is configured for the URL; Dial then asks for a raw
// stream the usual way, waiting for the switch before sending.
var errProxied = errors.New("through a proxy")

// ErrNotOffered: a leg dialled with DialOptions.Early cannot have the
// protocol offered, for which its first bytes were sent: the server (the
// agent behind it) does not speak it.
var ErrNotOffered = errors.New("the server does not offer the stream protocol")

// dialEarly connects to rawURL for a raw stream speaking protocol and
// returns it before asking: the request goes out with the first bytes
// written on it (see earlyConn). Through a proxy it returns errProxied.
func dialEarly(ctx context.Context, rawURL, protocol string, opts DialOptions) (*earlyConn, error) {
	u, err := wsconn.ParseURL(rawURL)
	if err != nil {
		return nil, err
	}
	plain := u.Scheme == "ws"
	u.Scheme = wire.HTTPScheme(u.Scheme)
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u.String(), nil)
	if err != nil {
		return nil, fmt.Errorf("bad URL %q: %w", rawURL, err)
	}
	if p, err := http.ProxyFromEnvironment(req); err != nil || p != nil {
		return nil, errProxied
	}
	req.Header.Set("Connection", "Upgrade")
	req.Header.Set("Upgrade", Upgrade)
	req.Header.Set(ProtocolHeader, protocol)
	var head bytes.Buffer
	if err := req.Write(&head); err != nil {
		return nil, fmt.Errorf("bad URL %q: %w", rawURL, err)
	}
	port := u.Port()
	if port == "" {
		port = map[bool]string{true: "80", false: "443"}[plain]
	}
	c, err := dialer.DialContext(ctx, "tcp", net.JoinHostPort(u.Hostname(), port))
	if err != nil {
		return nil, fmt.Errorf("connect to %s: %w", rawURL, err)
	}
	tune(c)
	tcp := c
	if !plain {
		tc := tls.Client(c, &tls.Config{ServerName: u.Hostname(), NextProtos: []string{"http/1.1"}, ClientSessionCache: opts.TLSSessions})
		if err := tc.HandshakeContext(ctx); err != nil {
			c.Close()
			return nil, fmt.Errorf("connect to %s: %w", rawURL, err)
		}
		c = tc
	}
	return &earlyConn{
		rawURL: rawURL, protocol: protocol, fallback: opts.Fallback, log: opts.Logger, response: opts.Response,
		c: c, tcp: tcp, plain: plain, br: bufio.NewReader(c),
		head: head.Bytes(), answered: make(chan struct{}),
	}, nil
}

// earlyConn is a raw stream whose request has not been answered yet. The
// first Write sends the request and its bytes together, in one flight
// (the request alone goes with a Read that comes first); what is written
// before the answer goes out at once and is kept, at most EarlyLimit. The
// first Read, or a Write past the limit, reads the answer: a switch to
// the protocol makes the connection the stream and drops what was kept;
// a refusal by a server that speaks raw streams is the error of every
// later call (a *wsconn.RefusedError); any other answer, with a Fallback,
// is remembered there, and the stream goes on over a WebSocket offering
// the protocol, on which the kept bytes are sent first: nothing is lost.
type earlyConn struct {
	// Set at construction.
	rawURL, protocol string
	fallback         *Fallback // nil: not switching is an error
	log              *slog.Logger
	response         func(http.Header) // DialOptions.Response, given the answer's headers; nil: none
	c                net.Conn          // the dialled connection, TLS over tcp for wss://
	tcp              net.Conn          // the TCP connection, for addresses
	plain            bool
	br               *bufio.Reader // over c: the answer, then the stream

	resolving sync.Mutex // held by whoever reads the answer

	mu       sync.Mutex
	head     []byte        // the request, until sent
	kept     []byte        // bytes sent before the answer
	broken   error         // a write before the answer failed
	answered chan struct{} // closed once cur or err is set
	cur      net.Conn      // the stream: a raw one, or the fallback WebSocket
	replayed bool          // the kept bytes went again on the fallback
	err      error
	closed   bool
}

func (e *earlyConn) Write(p []byte) (int, error) {
	e.mu.Lock()
	select {
	case <-e.answered:
		e.mu.Unlock()
		return e.stream(p)
	default:
	}
	if e.broken != nil || len(e.kept)+len(p) > EarlyLimit {
		e.mu.Unlock()
		return e.stream(p)
	}
	e.kept = append(e.kept, p...)
	var err error
	if e.head != nil {
		_, err = e.c.Write(append(e.head, p...))
		e.head = nil
	} else {
		_, err = e.c.Write(p)
	}
	if err != nil {
		e.broken = err
	}
	e.mu.Unlock()
	if err != nil { // the answer may say why, or the fallback carries p
		if aerr := e.answer(); aerr != nil {
			return 0, aerr
		}
		if e.replayed {
			return len(p), nil
		}
		return 0, err
	}
	return len(p), nil
}

// stream writes p once the answer is in.
func (e *earlyConn) stream(p []byte) (int, error) {
	if err := e.answer(); err != nil {
		return 0, err
	}
	return e.cur.Write(p)
}

func (e *earlyConn) Read(p []byte) (int, error) {
	if err := e.answer(); err != nil {
		return 0, err
	}
	return e.cur.Read(p)
}

// answer reads the server's answer, once, and returns its error.
func (e *earlyConn) answer() error {
	select {
	case <-e.answered:
		return e.err
	default:
	}
	e.resolving.Lock()
	defer e.resolving.Unlock()
	select {
	case <-e.answered:
		return e.err
	default:
	}
	e.mu.Lock()
	var err error
	if e.head != nil {
		_, err = e.c.Write(e.head)
		e.head = nil
	}
	e.mu.Unlock()
	var cur net.Conn
	if err == nil {
		cur, err = e.readAnswer()
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	if _, raw := cur.(bufferedStream); err == nil && !raw && len(e.kept) > 0 {
		if _, err = cur.Write(e.kept); err != nil {
			cur.Close()
		}
		e.replayed = err == nil
	}
	if err != nil {
		e.c.Close()
	} else if e.closed {
		cur.Close()
		err = net.ErrClosed
	}
	e.cur, e.err, e.kept = cur, err, nil
	close(e.answered)
	return err
}

// readAnswer reads the answer to the request and returns the stream it
// leaves: e.c, or a fallback WebSocket as a net.Conn.
func (e *earlyConn) readAnswer() (net.Conn, error) {
	resp, err := http.ReadResponse(e.br, nil)
	if err != nil {
		return nil, fmt.Errorf("connect to %s: %w", e.rawURL, err)
	}
	upgraded := hasToken(resp.Header, "Upgrade", Upgrade)
	switch {
	case resp.StatusCode == http.StatusSwitchingProtocols && upgraded:
		if got := resp.Header.Get(ProtocolHeader); got != e.protocol {
			return nil, fmt.Errorf("%s switched to stream protocol %q, not %q", e.rawURL, got, e.protocol)
		}
		if e.response != nil {
			e.response(resp.Header)
		}
		return bufferedStream{e.c, e.br, e.direct()}, nil
	case upgraded:
		return nil, wsconn.Refusal(e.rawURL, resp)
	}
	resp.Body.Close()
	e.c.Close()
	notSwitched := fmt.Errorf("%w: %s answered %s", ErrNotSwitched, e.rawURL, resp.Status)
	if e.fallback == nil {
		return nil, notSwitched
	}
	if e.log != nil {
		e.log.Info("the server does not take raw streams; using WebSockets", "error", notSwitched, "for", e.fallback.For)
	}
	e.fallback.remember()
	ctx, cancel := context.WithTimeout(context.Background(), dialer.Timeout)
	defer cancel()
	ws, err := wsconn.Dial(ctx, e.rawURL, wsconn.Options{Subprotocols: []string{e.protocol}, Response: e.response})
	if err != nil {
		return nil, err
	}
	if ws.Subprotocol() != e.protocol {
		ws.CloseNow()
		return nil, fmt.Errorf("%w: %s gives no raw stream for it, and no WebSocket either", ErrNotOffered, e.rawURL)
	}
	// The stream outlives the dial; Close ends it.
	return wsconn.NetConn(context.Background(), ws), nil
}

// bufferedStream is a switched connection whose reader may hold the
// first bytes behind the answer. Without TLS, once the reader holds
// nothing, reads and writes go to the TCP connection's descriptor with
// raw system calls (see internal/rawio): a stream's ends are idle between
// pieces, and the runtime's bookkeeping of an ordinary call then costs
// them a quarter of their CPU.
type bufferedStream struct {
	net.Conn
	br *bufio.Reader
	fd *rawio.FD // nil: through Conn
}

func (b bufferedStream) Read(p []byte) (int, error) {
	if b.fd != nil && b.br.Buffered() == 0 {
		return b.fd.Read(p)
	}
	return b.br.Read(p)
}

func (b bufferedStream) Write(p []byte) (int, error) {
	if b.fd != nil {
		return b.fd.Write(p)
	}
	return b.Conn.Write(p)
}

// direct is the descriptor a switched stream without TLS reads and writes
// directly, or nil.
func (e *earlyConn) direct() *rawio.FD {
	if tc, ok := e.c.(*net.TCPConn); ok && e.plain {
		return rawio.For(tc)
	}
	return nil
}

// Close closes the connection, and the fallback WebSocket if there is one.
func (e *earlyConn) Close() error {
	err := e.c.Close()
	e.mu.Lock()
	e.closed = true
	cur := e.cur
	e.mu.Unlock()
	if _, raw := cur.(bufferedStream); cur != nil && !raw {
		err = cur.Close()
	}
	return err
}

// CloseWrite ends the sending direction of a switched stream without
// TLS; otherwise it returns errors.ErrUnsupported (see conn.CloseWrite).
func (e *earlyConn) CloseWrite() error {
	select {
	case <-e.answered:
	default:
		return errors.ErrUnsupported
	}
	if _, ok := e.cur.(bufferedStream); ok && e.plain {
		if tc, ok := e.tcp.(*net.TCPConn); ok {
			return tc.CloseWrite()
		}
	}
	return errors.ErrUnsupported
}

func (e *earlyConn) LocalAddr() net.Addr  { return e.tcp.LocalAddr() }
func (e *earlyConn) RemoteAddr() net.Addr { return e.tcp.RemoteAddr() }

// deadlined is the connection deadlines apply to: the stream once the
// answer is in, else the dialled connection.
func (e *earlyConn) deadlined() net.Conn {
	select {
	case <-e.answered:
		if e.cur != nil {
			return e.cur
		}
	default:
	}
	return e.c
}

func (e *earlyConn) SetDeadline(t time.Time) error      { return e.deadlined().SetDeadline(t) }
func (e *earlyConn) SetReadDeadline(t time.Time) error  { return e.deadlined().SetReadDeadline(t) }
func (e *earlyConn) SetWriteDeadline(t time.Time) error { return e.deadlined().SetWriteDeadline(t) }
