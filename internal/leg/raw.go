package leg

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"slices"
	"strings"
	"time"

	"github.com/converge-ci/converge/internal/splice"
	"github.com/converge-ci/converge/internal/wire"
	"github.com/converge-ci/converge/internal/wsconn"
)

const (
	// Upgrade is the HTTP Upgrade token that asks for a raw stream.
	Upgrade = "converge-stream"
	// ProtocolHeader carries in a request the stream protocols the client
	// offers, comma-separated in order of preference, and in the switching
	// response the one chosen; absent, the stream is plain.
	ProtocolHeader = "Converge-Protocol"
)

// Liveness of raw stream connections, the hop-by-hop judgement that
// WebSocket pings make on WebSocket legs (wsconn.PingInterval and
// PingTimeout): an idle connection is probed after KeepaliveIdle and
// declared dead after KeepaliveCount unanswered probes KeepaliveInterval
// apart; sent bytes unacknowledged for UserTimeout end it too, where the
// system can tell (Linux, macOS, Windows).
const (
	KeepaliveIdle     = 15 * time.Second
	KeepaliveInterval = 5 * time.Second
	KeepaliveCount    = 3
	UserTimeout       = wsconn.PingInterval + wsconn.PingTimeout
)

// ErrNotSwitched: the server, or a proxy in front of it, did not switch to
// a raw stream and did not refuse as a Converge server does: it may speak
// only WebSocket. Ask for a WebSocket instead.
var ErrNotSwitched = errors.New("the server did not switch to a raw stream")

// Requested reports whether r asks for a raw stream.
func Requested(r *http.Request) bool {
	return hasToken(r.Header, "Connection", "upgrade") && hasToken(r.Header, "Upgrade", Upgrade)
}

// offeredRaw returns the stream protocols r, a raw stream request, offers,
// in its order.
func offeredRaw(r *http.Request) []string { return tokens(r.Header, ProtocolHeader) }

// Advertise marks the response to r, when r asks for a raw stream, as
// coming from a server that speaks raw streams, so that a refusal (any
// answer but the switch) is reported by the client rather than retried
// with a WebSocket. Call it before writing the status; it does nothing to
// a WebSocket request.
func Advertise(w http.ResponseWriter, r *http.Request) {
	if Requested(r) {
		w.Header().Set("Upgrade", Upgrade)
	}
}

// notSwitched answers a raw stream request without switching, as a
// server that takes only WebSockets would (no Upgrade: converge-stream,
// so the client retries with a WebSocket), and closes the connection:
// what follows the request is the client's stream, not a request.
func notSwitched(w http.ResponseWriter) error {
	w.Header().Set("Upgrade", "websocket")
	w.Header().Set("Connection", "close")
	http.Error(w, "a plain stream needs a WebSocket", http.StatusUpgradeRequired)
	return fmt.Errorf("%w: a raw stream for a plain stream", ErrNotSwitched)
}

// acceptRaw switches r's connection to a raw stream, answering 101 with
// protocol (none when empty), and returns the connection, with deadlines
// cleared and liveness set. Over plain TCP the connection is the
// *net.TCPConn itself, unless the client sent bytes before the switch.
func acceptRaw(w http.ResponseWriter, r *http.Request, protocol string) (net.Conn, error) {
	c, brw, err := http.NewResponseController(w).Hijack()
	if err != nil {
		return nil, fmt.Errorf("raw stream: hijack: %w", err)
	}
	var resp strings.Builder
	resp.WriteString("HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: " + Upgrade + "\r\n")
	if protocol != "" {
		resp.WriteString(ProtocolHeader + ": " + protocol + "\r\n")
	}
	for k, vs := range w.Header() { // the caller's, as a WebSocket's accept sends them
		if k != "Upgrade" && k != "Connection" && k != ProtocolHeader {
			for _, v := range vs {
				if strings.ContainsAny(k+v, "\r\n") {
					continue // it would split the response
				}
				resp.WriteString(k + ": " + v + "\r\n")
			}
		}
	}
	resp.WriteString("\r\n")
	c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.WriteString(c, resp.String()); err != nil {
		c.Close()
		return nil, fmt.Errorf("raw stream: answer the upgrade: %w", err)
	}
	c.SetDeadline(time.Time{})
	tune(c)
	// Bytes the client sent right behind its request (DialOptions.Early),
	// which the HTTP server had already read, come first.
	return splice.WithBuffered(c, brw.Reader), nil
}

var dialer = &net.Dialer{Timeout: 30 * time.Second}

// dialRaw asks rawURL (ws:// or wss://, through HTTPS_PROXY, HTTP_PROXY and
// NO_PROXY as a WebSocket dial would go) for a raw stream, offering
// protocols, and returns it with the protocol the server chose ("" for
// none). A refusal by a server that speaks raw streams is a
// *wsconn.RefusedError; any other answer but the switch is ErrNotSwitched.
// ctx bounds the handshake only. response, when set, gets the switch's
// headers.
func dialRaw(ctx context.Context, rawURL string, protocols []string, response func(http.Header)) (net.Conn, string, error) {
	u, err := wsconn.ParseURL(rawURL)
	if err != nil {
		return nil, "", err
	}
	plain := u.Scheme == "ws"
	u.Scheme = wire.HTTPScheme(u.Scheme)
	var tcp net.Conn // the connection the transport dials, for addresses and deadlines
	tr := &http.Transport{
		Proxy: http.ProxyFromEnvironment,
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			c, err := dialer.DialContext(ctx, network, addr)
			if err == nil {
				tune(c)
				tcp = c
			}
			return c, err
		},
		TLSHandshakeTimeout: 15 * time.Second,
		DisableKeepAlives:   true,
	}
	defer tr.CloseIdleConnections()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u.String(), nil)
	if err != nil {
		return nil, "", fmt.Errorf("bad URL %q: %w", rawURL, err)
	}
	req.Header.Set("Connection", "Upgrade")
	req.Header.Set("Upgrade", Upgrade)
	if len(protocols) > 0 {
		req.Header.Set(ProtocolHeader, strings.Join(protocols, ", "))
	}
	resp, err := tr.RoundTrip(req) // no redirects: an upgrade is not followed
	if err != nil {
		return nil, "", fmt.Errorf("connect to %s: %w", rawURL, err)
	}
	c, proto, err := switched(rawURL, resp, tcp, protocols, plain)
	if err == nil && response != nil {
		response(resp.Header)
	}
	return c, proto, err
}

// switched makes the connection of a response to dialRaw's request, or the
// error it stands for.
func switched(rawURL string, resp *http.Response, tcp net.Conn, protocols []string, plain bool) (net.Conn, string, error) {
	upgraded := hasToken(resp.Header, "Upgrade", Upgrade)
	if resp.StatusCode != http.StatusSwitchingProtocols {
		if upgraded {
			return nil, "", wsconn.Refusal(rawURL, resp)
		}
		resp.Body.Close()
		return nil, "", fmt.Errorf("%w: %s answered %s", ErrNotSwitched, rawURL, resp.Status)
	}
	rwc, ok := resp.Body.(io.ReadWriteCloser)
	if !upgraded || !ok || tcp == nil {
		resp.Body.Close()
		return nil, "", fmt.Errorf("%w: %s switched to %q", ErrNotSwitched, rawURL, resp.Header.Get("Upgrade"))
	}
	proto := resp.Header.Get(ProtocolHeader)
	if proto != "" && !slices.Contains(protocols, proto) {
		rwc.Close()
		return nil, "", fmt.Errorf("%s chose stream protocol %q, which was not offered", rawURL, proto)
	}
	return &conn{ReadWriteCloser: rwc, tcp: tcp, plain: plain}, proto, nil
}

// conn is a dialled raw stream: the response body carries the bytes (those
// the transport read past the 101 first, then the connection's own), and
// the dialled TCP connection gives addresses and deadlines.
type conn struct {
	io.ReadWriteCloser
	tcp   net.Conn
	plain bool // no TLS on tcp: CloseWrite may shut it down
}

func (c *conn) LocalAddr() net.Addr                { return c.tcp.LocalAddr() }
func (c *conn) RemoteAddr() net.Addr               { return c.tcp.RemoteAddr() }
func (c *conn) SetDeadline(t time.Time) error      { return c.tcp.SetDeadline(t) }
func (c *conn) SetReadDeadline(t time.Time) error  { return c.tcp.SetReadDeadline(t) }
func (c *conn) SetWriteDeadline(t time.Time) error { return c.tcp.SetWriteDeadline(t) }

// CloseWrite ends the sending direction after what was written, when the
// stream runs without TLS. With TLS it returns errors.ErrUnsupported and
// does nothing (the TLS connection belongs to the HTTP transport); the
// caller then just closes.
func (c *conn) CloseWrite() error {
	if tc, ok := c.tcp.(*net.TCPConn); ok && c.plain {
		return tc.CloseWrite()
	}
	return errors.ErrUnsupported
}

// tune sets the liveness of a raw stream connection (see KeepaliveIdle).
func tune(c net.Conn) {
	tc, ok := c.(*net.TCPConn)
	if !ok {
		return
	}
	tc.SetKeepAliveConfig(net.KeepAliveConfig{Enable: true, Idle: KeepaliveIdle, Interval: KeepaliveInterval, Count: KeepaliveCount})
	if rc, err := tc.SyscallConn(); err == nil {
		rc.Control(func(fd uintptr) { setUserTimeout(fd, UserTimeout) })
	}
}

// hasToken reports whether the comma-separated header name lists token
// (case-insensitively).
func hasToken(h http.Header, name, token string) bool {
	return slices.ContainsFunc(tokens(h, name), func(t string) bool { return strings.EqualFold(t, token) })
}

func tokens(h http.Header, name string) []string {
	var out []string
	for _, v := range h.Values(name) {
		for t := range strings.SplitSeq(v, ",") {
			if t = strings.TrimSpace(t); t != "" {
				out = append(out, t)
			}
		}
	}
	return out
}
