package server

import (
	"bufio"
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"log/slog"
	"math"
	"net"
	"net/http"
	"net/url"
	"time"

	"github.com/converge-ci/converge/internal/leg"
	"github.com/converge-ci/converge/internal/splice"
	"github.com/converge-ci/converge/internal/wire"
)

// handshakeHeaders are the request headers of a WebSocket handshake, or
// of an upgrade to a raw stream (see internal/leg), passed to the holder as
// the client sent them.
var handshakeHeaders = []string{"Upgrade", "Connection", "Sec-Websocket-Key", "Sec-Websocket-Version",
	"Sec-Websocket-Protocol", "Sec-Websocket-Extensions", leg.ProtocolHeader}

// maxHolderHead bounds the status line and headers read from a holder's
// answer; ours are a few hundred bytes.
const maxHolderHead = 16 << 10

// dialOwner sends r's handshake, as a request of kind for id (and token)
// on behalf of the client at addr, to owner (ws:// or wss://, maybe with
// a path), and reads the answer. The connection and reader are the
// caller's to close and read; bytes after the answer are in br.
func (c *cluster) dialOwner(ctx context.Context, r *http.Request, owner, kind, id, token, addr string) (conn net.Conn, br *bufio.Reader, resp *http.Response, err error) {
	u, err := url.Parse(owner)
	if err != nil {
		return nil, nil, nil, err
	}
	path := u.Path + wire.ClientPath(id)
	if kind == forwardStream {
		path = u.Path + wire.StreamPath(id, token)
	}
	scheme, port := wire.HTTPScheme(u.Scheme), "80"
	if scheme == "https" {
		port = "443"
	}
	if u.Port() != "" {
		port = u.Port()
	}
	req, err := http.NewRequest(http.MethodGet, scheme+"://"+u.Host+path, nil)
	if err != nil {
		return nil, nil, nil, err
	}
	for _, h := range handshakeHeaders {
		for _, v := range r.Header.Values(h) {
			req.Header.Add(h, v)
		}
	}
	ms := c.signMS()
	req.Header.Set(forwardHeader, fmt.Sprintf("v1 %d %s %s", ms, addr, forwardMAC(c.s.tokens.Key(), kind, id, token, ms, addr)))

	ctx, cancel := context.WithTimeout(ctx, forwardDialTimeout)
	defer cancel()
	d := net.Dialer{KeepAlive: 30 * time.Second}
	conn, err = d.DialContext(ctx, "tcp", net.JoinHostPort(u.Hostname(), port))
	if err != nil {
		return nil, nil, nil, err
	}
	stop := context.AfterFunc(ctx, func() { conn.SetDeadline(time.Unix(1, 0)) }) // bound the handshake
	defer stop()
	if scheme == "https" {
		tc := tls.Client(conn, &tls.Config{ServerName: u.Hostname(), NextProtos: []string{"http/1.1"}})
		if err := tc.HandshakeContext(ctx); err != nil {
			conn.Close()
			return nil, nil, nil, err
		}
		conn = tc
	}
	// The answer's head is read through a limit (a holder named by a
	// forged registry entry must not make this replica buffer without
	// end); the tunnel's bytes after it are not.
	head := &io.LimitedReader{R: conn, N: maxHolderHead + 4096} // + what one read ahead may take
	br = bufio.NewReaderSize(head, 4096)
	if err = req.Write(conn); err == nil {
		resp, err = http.ReadResponse(br, req)
	}
	if err != nil && head.N <= 0 {
		err = fmt.Errorf("its answer's head is over %d bytes", maxHolderHead)
	}
	head.N = math.MaxInt64
	if !stop() || err != nil {
		conn.Close()
		return nil, nil, nil, fmt.Errorf("handshake with %s: %w", owner, errOr(err, ctx.Err()))
	}
	return conn, br, resp, nil
}

func errOr(err, other error) error {
	if err != nil {
		return err
	}
	return other
}

// forward passes r, a request of kind for id (and token) from the client
// at remote, to owner, the replica holding the agent, and relays the
// connection once the holder accepts it.
func (s *Server) forward(w http.ResponseWriter, r *http.Request, kind, id, token, owner, remote string) {
	endpoint := endpointClient
	if kind == forwardStream {
		endpoint = endpointAgent
	}
	log := s.log.With("id", id, "remote", remote, "owner", owner, "forward", kind)
	start := time.Now()
	up, br, resp, err := s.peers.dialOwner(s.ctx, r, owner, kind, id, token, remote)
	if err != nil {
		log.Warn("cannot reach the replica holding the agent", "error", err)
		s.metrics.refused(endpoint, reasonAgentUnavailable)
		http.Error(w, fmt.Sprintf("the server holding agent %q cannot be reached; retry in a few seconds", id), http.StatusServiceUnavailable)
		return
	}
	if resp.StatusCode != http.StatusSwitchingProtocols {
		relayRefusal(w, resp)
		up.Close()
		log.Info("forwarded request refused by the holder", "status", resp.StatusCode)
		return
	}
	client, cbuf, err := http.NewResponseController(w).Hijack()
	if err != nil {
		up.Close()
		return
	}
	cbuf.WriteString("HTTP/1.1 101 Switching Protocols\r\n")
	resp.Header.Write(cbuf)
	cbuf.WriteString("\r\n")
	if err := cbuf.Flush(); err != nil {
		client.Close()
		up.Close()
		return
	}
	// Both readers may hold bytes past the heads they read: the tunnel
	// writes those first, then splices the connections in the kernel.
	s.tunnel(splice.WithBuffered(client, cbuf.Reader), splice.WithBuffered(up, br), kind, log, start)
}

// relayRefusal passes the holder's refusal on: its status (a 4xx or 5xx;
// anything else is 502) and the first 4 KiB of its message, always as
// plain text that no browser sniffs or runs, whatever the holder said
// its type was: a holder named by a forged registry entry must not serve
// a page on the relay's origin.
func relayRefusal(w http.ResponseWriter, resp *http.Response) {
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
	status := resp.StatusCode
	if status < 400 || status > 599 {
		status = http.StatusBadGateway
	}
	h := w.Header()
	h.Set("Content-Type", "text/plain; charset=utf-8")
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("Content-Security-Policy", "default-src 'none'; sandbox")
	// Whether it is a refusal, or a raw stream not switched to (the client
	// keeps its early bytes and asks for a WebSocket), is the holder's
	// word, as are its Connection and Upgrade headers.
	h.Del("Upgrade")
	for _, k := range []string{"Upgrade", "Connection"} {
		if v := resp.Header.Get(k); v != "" {
			h.Set(k, v)
		}
	}
	w.WriteHeader(status)
	w.Write(body)
}

// tunnel relays between c, the client's connection, and up, the
// holder's, until either ends or the server drains.
func (s *Server) tunnel(c, up net.Conn, kind string, log *slog.Logger, start time.Time) {
	release, ok := s.conns.add(tunnelHeld{c, up})
	if !ok {
		c.Close()
		up.Close()
		return
	}
	defer release()
	s.metrics.forwarded.WithLabelValues(kind).Inc()
	s.metrics.forwardedOpen.Inc()
	defer s.metrics.forwardedOpen.Dec()
	log.Info("forwarded", "setup", time.Since(start).Round(time.Microsecond))
	res := splice.Splice(c, up)
	log.Info("forward ended", "duration", time.Since(start).Round(time.Millisecond),
		"bytes_in", res.AToB, "bytes_out", res.BToA, "reason", errString(res.Err))
}

// tunnelHeld lets the set of connections (conns) hold a forwarded
// connection: both ends, client and holder. It carries the client's
// WebSocket end to end, so a drain cannot close it with 1001 as it does
// its own: it cuts it, and resumable clients come back through another
// replica.
type tunnelHeld struct{ c, up net.Conn }

func (t tunnelHeld) CloseNow() error {
	t.up.Close()
	return t.c.Close()
}
