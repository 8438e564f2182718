// Package leg is one hop of a relayed stream, between a Converge program
// and the server: a WebSocket, or a raw stream, an HTTP/1.1 Upgrade
// (`Upgrade: converge-stream`) after which the connection carries the
// bytes unframed both ways, so that the server splices two raw legs in
// the kernel instead of unframing and reframing WebSocket messages.
// Browsers, other WebSocket tools and proxies that pass only WebSockets
// keep WebSockets, which the same URLs answer.
//
// A Conn is either kind, and only this package knows which: Dial asks for
// a raw stream first and falls back to a WebSocket when a proxy refuses
// the upgrade (remembering it in a Fallback its caller owns), Accept
// answers either, and the methods (control messages, bytes, close) do
// what each kind needs. Code outside this package never branches on the
// kind (internal/test/e2e's layout test holds it to that); Kind names it
// for logs and metrics only.
//
// A raw stream has no keepalive of its own: both ends get TCP keepalives
// and, where the system has one, a user timeout, which judge the hop as
// WebSocket pings do, and what is carried must keep middleboxes from
// cutting it when idle (resumable streams send keepalive
// acknowledgements; see internal/resume). So a raw leg carries only a
// stream that speaks a protocol (Carries). It is not a protocol of its
// own: the bytes are the caller's, and the end of the stream is the end
// of the connection.
package leg

import (
	"context"
	"crypto/tls"
	"errors"
	"io"
	"log/slog"
	"math"
	"net"
	"net/http"
	"strings"
	"sync/atomic"
	"time"

	"github.com/coder/websocket"

	"github.com/converge-ci/converge/internal/wsconn"
)

// Kinds of leg, as Kind names them in logs and metric labels.
const (
	KindRaw       = "raw"
	KindWebSocket = "websocket"
)

// Conn is one leg: a WebSocket or a raw stream. Exactly one of its
// transports is set, for its whole life. A *Conn is comparable and may
// be held in a set (the server's set of hijacked connections).
type Conn struct {
	ws       *websocket.Conn
	raw      net.Conn
	protocol string
}

// Kind names c's transport, KindRaw or KindWebSocket, for logs and
// metrics. Nothing should branch on it: ask c to do the thing instead.
func (c *Conn) Kind() string {
	if c.ws != nil {
		return KindWebSocket
	}
	return KindRaw
}

// Protocol is the stream protocol negotiated for c ("" for none): the
// WebSocket subprotocol, or the raw stream's ProtocolHeader.
func (c *Conn) Protocol() string { return c.protocol }

// Carries reports whether c may carry a stream speaking protocol. A
// WebSocket carries any stream; a raw stream only one that speaks a
// protocol (protocol not ""), whose ends keep it busy: a plain stream
// needs a WebSocket's pings to pass proxies that cut idle connections.
func (c *Conn) Carries(protocol string) bool { return c.ws != nil || protocol != "" }

// Accept upgrades r to a raw stream when it asks for one, else to a
// WebSocket, choosing protocol ("" for none; the caller picks it from
// Offered). On an error the response has been written (or the connection
// is gone) and there is no leg. A raw stream request for no protocol is
// answered 426 without switching (ErrNotSwitched), as a server that takes
// only WebSockets answers: a raw stream carries only a stream speaking a
// protocol (Carries), and bytes the client sent behind its request
// (DialOptions.Early) are for the protocol it offered, so the client
// keeps them and asks again for a WebSocket.
func Accept(w http.ResponseWriter, r *http.Request, protocol string) (*Conn, error) {
	if Requested(r) {
		if protocol == "" {
			return nil, notSwitched(w)
		}
		c, err := acceptRaw(w, r, protocol)
		if err != nil {
			return nil, err
		}
		return &Conn{raw: c, protocol: protocol}, nil
	}
	var offer []string
	if protocol != "" {
		offer = []string{protocol}
	}
	c, err := wsconn.Accept(w, r, offer...)
	if err != nil {
		return nil, err
	}
	return &Conn{ws: c, protocol: c.Subprotocol()}, nil
}

// Offered returns the stream protocols r offers, in its order: those of
// a raw stream request (ProtocolHeader), or a WebSocket's subprotocols.
func Offered(r *http.Request) []string {
	if Requested(r) {
		return offeredRaw(r)
	}
	var out []string
	for _, v := range r.Header.Values("Sec-WebSocket-Protocol") {
		for _, p := range strings.Split(v, ",") {
			out = append(out, strings.TrimSpace(p))
		}
	}
	return out
}

// Fallback remembers that a server, or a proxy in front of it, did not
// switch to a raw stream, so that Dial asks for a WebSocket at once for a
// while rather than paying the refused upgrade's round trip each time.
// Its zero value asks for raw streams and remembers a refusal for its
// whole life; set For to ask again after that long (the server may have
// been upgraded meanwhile). It is safe for concurrent use; set For before
// the first Dial.
type Fallback struct {
	For time.Duration

	until atomic.Int64 // unix nanoseconds; 0: ask for raw streams
}

// wsOnly reports whether Dial should skip the raw stream; f may be nil.
func (f *Fallback) wsOnly() bool {
	return f != nil && time.Now().UnixNano() < f.until.Load()
}

func (f *Fallback) remember() {
	until := int64(math.MaxInt64)
	if f.For > 0 {
		until = time.Now().Add(f.For).UnixNano()
	}
	f.until.Store(until)
}

// DialOptions for Dial.
type DialOptions struct {
	// Protocols are the stream protocols offered, in order of preference.
	Protocols []string
	// Raw asks for a raw stream first; false dials a WebSocket.
	Raw bool
	// Fallback, when set, lets Dial fall back to a WebSocket when the
	// answer to the raw stream request is not the switch (ErrNotSwitched),
	// or is a switch to no protocol (see Carries), and remembers that. Nil:
	// Dial returns ErrNotSwitched, and a plain raw stream as it is.
	Fallback *Fallback
	// Early, with Raw and exactly one protocol, lets Dial return once
	// connected, before the server answers: the request leaves with the
	// first bytes written, in one flight, instead of a round trip ahead of
	// them (docs/protocol.md, Early bytes). The Conn's Protocol is then the
	// one offered; an answer that does not give it (a refusal, a switch to
	// another, no switch without a Fallback, or a fallback WebSocket that
	// does not offer it) is the error of the first Read or Write that needs
	// the answer. Not switching, with a Fallback, is remembered there, and
	// the stream goes on over a WebSocket that first carries again what
	// was written before the answer. Through an HTTP proxy Dial waits for
	// the answer as without Early.
	Early bool
	// TLSSessions, when set, keeps the TLS sessions of raw streams dialled
	// with Early over wss://, keyed by server name, so that a later
	// connection to the same server resumes its session instead of a full
	// handshake (wsproxy keeps them in a file between runs).
	TLSSessions tls.ClientSessionCache
	// Logger, when set, logs a fallback at info level.
	Logger *slog.Logger
	// Response, when set, is called with the headers of the server's
	// switch (101), raw stream or WebSocket: before Dial returns, or with
	// Early when the answer is read (the first Read, or a Write past
	// EarlyLimit).
	Response func(http.Header)
}

// Dial opens a leg to rawURL (ws:// or wss://, through HTTPS_PROXY,
// HTTP_PROXY and NO_PROXY), a raw stream or a WebSocket as opts say.
// A refusal by a server that speaks raw streams is a *wsconn.RefusedError
// and is not retried. ctx bounds the handshake only.
func Dial(ctx context.Context, rawURL string, opts DialOptions) (*Conn, error) {
	if opts.Raw && opts.Early && len(opts.Protocols) == 1 && !opts.Fallback.wsOnly() {
		c, err := dialEarly(ctx, rawURL, opts.Protocols[0], opts)
		if err == nil {
			return &Conn{raw: c, protocol: opts.Protocols[0]}, nil
		}
		if !errors.Is(err, errProxied) {
			return nil, err
		}
	}
	if opts.Raw && !opts.Fallback.wsOnly() {
		c, proto, err := dialRaw(ctx, rawURL, opts.Protocols, opts.Response)
		switch {
		case err == nil && (proto != "" || opts.Fallback == nil):
			return &Conn{raw: c, protocol: proto}, nil
		case err == nil:
			c.Close()
			opts.Fallback.remember()
		case errors.Is(err, ErrNotSwitched) && opts.Fallback != nil:
			if opts.Logger != nil {
				opts.Logger.Info("the server does not take raw streams; using WebSockets", "error", err, "for", opts.Fallback.For)
			}
			opts.Fallback.remember()
		default:
			return nil, err
		}
	}
	ws, err := wsconn.Dial(ctx, rawURL, wsconn.Options{Subprotocols: opts.Protocols, Response: opts.Response})
	if err != nil {
		return nil, err
	}
	return &Conn{ws: ws, protocol: ws.Subprotocol()}, nil
}

// Close ends c, telling a WebSocket peer why with code and reason (the
// closing handshake, which waits a few seconds at most); a raw stream can
// only be closed.
func (c *Conn) Close(code websocket.StatusCode, reason string) error {
	if c.ws != nil {
		return c.ws.Close(code, reason)
	}
	return c.raw.Close()
}

// CloseNow closes c at once, without a closing handshake.
func (c *Conn) CloseNow() error {
	if c.ws != nil {
		return c.ws.CloseNow()
	}
	return c.raw.Close()
}

// Relayed is c's bytes as a relay passes them on, unchanged and without
// pings of its own. A raw stream is the connection itself: over plain TCP
// the *net.TCPConn, which internal/splice moves in the kernel. A
// WebSocket carries them in binary messages, lives until ctx ends or it
// is closed, and a read that fails returns no bytes (never the masked
// tail of a frame cut in the middle, see wsconn.CleanReads).
func (c *Conn) Relayed(ctx context.Context) net.Conn {
	if c.ws != nil {
		return handshakeClose{wsconn.CleanReads(websocket.NetConn(ctx, c.ws, websocket.MessageBinary)), c.ws}
	}
	return c.raw
}

// handshakeClose closes a relayed WebSocket with the closing handshake
// first. coder/websocket's net.Conn cancels its read context before it
// closes, and a Read in flight on another goroutine (the relay's other
// direction) then cuts the connection at once: the peer could lose the
// close frame and see an error after the last byte instead of the end
// of the stream.
type handshakeClose struct {
	net.Conn
	ws *websocket.Conn
}

func (h handshakeClose) Close() error {
	err := h.ws.Close(websocket.StatusNormalClosure, "")
	h.Conn.Close() // stops its timers; the WebSocket is closed already
	return err
}

// NetConn is c as one end of a plain stream: a WebSocket in binary
// messages that pings its peer while open (see wsconn.NetConn), living
// until ctx ends or it is closed; a raw stream as it is.
func (c *Conn) NetConn(ctx context.Context) net.Conn {
	if c.ws != nil {
		return wsconn.NetConn(ctx, c.ws)
	}
	return c.raw
}

// Framings adapts a leg to a protocol that frames its bytes differently
// on each transport (internal/resume's links: acknowledgements on a raw
// stream, pings on a WebSocket). Carry calls the method for c's kind.
type Framings interface {
	Raw(c net.Conn) io.ReadWriteCloser
	WebSocket(c *websocket.Conn) io.ReadWriteCloser
}

// Carry returns c framed by f.
func (c *Conn) Carry(f Framings) io.ReadWriteCloser {
	if c.ws != nil {
		return f.WebSocket(c.ws)
	}
	return f.Raw(c.raw)
}
