package agent

import (
	"context"
	"errors"
	"io"
	"net"
	"sync/atomic"
	"time"

	"github.com/coder/websocket"

	"github.com/converge-ci/converge/internal/rawstream"
	"github.com/converge-ci/converge/internal/resume"
	"github.com/converge-ci/converge/internal/wire"
	"github.com/converge-ci/converge/internal/wsconn"
)

// wsOnlyFor is how long the agent dials streams as WebSockets after the
// server (or a proxy in front of it) did not switch to a raw stream,
// before it asks again (the server may have been upgraded meanwhile).
const wsOnlyFor = 10 * time.Minute

// streamDialer remembers whether the server takes raw streams.
type streamDialer struct {
	wsOnlyUntil atomic.Int64 // unix nanoseconds; 0: ask for raw streams
}

// streamConn is the agent's end of one stream connection to the server:
// a WebSocket or a raw stream (internal/rawstream). Exactly one is set.
type streamConn struct {
	ws  *websocket.Conn
	raw net.Conn
}

// dialStream opens the stream connection a waiting client needs and hands
// it to the SSH server. A resumable stream's leg is a raw stream, which
// the server splices in the kernel; plain streams keep WebSockets, whose
// pings keep idle connections open through proxies.
func (a *Agent) dialStream(ctx context.Context, d wire.Dial) {
	c, err := a.openStream(ctx, d.Token, d.Protocol == resume.Protocol)
	if err != nil {
		a.log.Warn("cannot open stream for a client", "error", err)
		return
	}
	a.serveStream(ctx, c, d.Protocol)
}

// openStream dials the server's stream endpoint with token, which the
// server gave over the control connection (in a dial or a pool message).
// With raw it asks for a raw stream unless the server did not switch to
// one lately, and falls back to a WebSocket when it does not switch now.
func (a *Agent) openStream(ctx context.Context, token string, raw bool) (streamConn, error) {
	url := a.cfg.Server + wire.StreamPath(a.cfg.ID, token)
	dctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	defer cancel()
	if raw && time.Now().UnixNano() >= a.dialer.wsOnlyUntil.Load() {
		c, _, err := rawstream.Dial(dctx, url, []string{wire.StreamProtocol}, rawstream.Options{})
		switch {
		case err == nil:
			return streamConn{raw: c}, nil
		case errors.Is(err, rawstream.ErrNotSwitched):
			a.log.Info("the server does not take raw streams; using WebSockets", "error", err, "for", wsOnlyFor)
			a.dialer.wsOnlyUntil.Store(time.Now().Add(wsOnlyFor).UnixNano())
		default:
			return streamConn{}, err
		}
	}
	ws, err := wsconn.Dial(dctx, url, wsconn.Options{Subprotocols: []string{wire.StreamProtocol}})
	return streamConn{ws: ws}, err
}

// serveStream hands c, a stream to one client who negotiated protocol
// with the server, to the SSH server: at once for a plain stream, through
// the resume layer for a resumable one.
func (a *Agent) serveStream(ctx context.Context, c streamConn, protocol string) {
	switch {
	case protocol != resume.Protocol && c.ws != nil:
		a.ln.deliver(wsconn.NetConn(ctx, c.ws))
	case protocol != resume.Protocol:
		a.ln.deliver(c.raw) // the server assigns raw idle streams to resumable clients only
	case c.ws != nil:
		a.attachResumable(ctx, resume.WebSocket(c.ws, wsconn.PingInterval, wsconn.PingTimeout))
	default:
		a.attachResumable(ctx, resume.Stream(c.raw, wsconn.PingInterval))
	}
}

// attachResumable gives link to the resumable sessions: a new session is
// served once; a returning client's link joins its session, which the SSH
// server never sees.
func (a *Agent) attachResumable(ctx context.Context, link io.ReadWriteCloser) {
	stop := context.AfterFunc(ctx, func() { link.Close() })
	conn, err := a.resumed.Attach(link)
	stop()
	if err != nil {
		a.log.Info("resumable stream refused", "error", err)
		return
	}
	if conn != nil {
		a.ln.deliver(conn)
	}
}
