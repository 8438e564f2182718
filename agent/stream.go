package agent

import (
	"context"
	"errors"
	"io"
	"sync/atomic"
	"time"

	"github.com/converge-ci/converge/internal/rawstream"
	"github.com/converge-ci/converge/internal/resume"
	"github.com/converge-ci/converge/internal/wire"
	"github.com/converge-ci/converge/internal/wsconn"
)

// wsOnlyFor is how long the agent dials streams back as WebSockets after
// the server (or a proxy in front of it) did not switch to a raw stream,
// before it asks again (the server may have been upgraded meanwhile).
const wsOnlyFor = 10 * time.Minute

// streamDialer remembers whether the server takes raw streams.
type streamDialer struct {
	wsOnlyUntil atomic.Int64 // unix nanoseconds; 0: ask for raw streams
}

// dialStream opens the stream connection a waiting client needs and hands
// it to the SSH server. A resumable stream's leg is a raw stream
// (internal/rawstream), which the server splices in the kernel, unless the
// server did not switch to one lately; plain streams keep WebSockets,
// whose pings keep idle connections open through proxies.
func (a *Agent) dialStream(ctx context.Context, d wire.Dial) {
	url := a.cfg.Server + wire.StreamPath(a.cfg.ID, d.Token)
	if d.Protocol == resume.Protocol && time.Now().UnixNano() >= a.dialer.wsOnlyUntil.Load() {
		dctx, cancel := context.WithTimeout(ctx, 15*time.Second)
		c, _, err := rawstream.Dial(dctx, url, []string{wire.StreamProtocol}, rawstream.Options{})
		cancel()
		switch {
		case err == nil:
			a.attachResumable(ctx, resume.Stream(c, wsconn.PingInterval))
			return
		case errors.Is(err, rawstream.ErrNotSwitched):
			a.log.Info("the server does not take raw streams; using WebSockets", "error", err, "for", wsOnlyFor)
			a.dialer.wsOnlyUntil.Store(time.Now().Add(wsOnlyFor).UnixNano())
		default:
			a.log.Warn("cannot open stream for a client", "error", err)
			return
		}
	}
	dctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	c, err := wsconn.Dial(dctx, url, wsconn.Options{Subprotocols: []string{wire.StreamProtocol}})
	cancel()
	if err != nil {
		a.log.Warn("cannot open stream for a client", "error", err)
		return
	}
	if d.Protocol != resume.Protocol {
		a.ln.deliver(wsconn.NetConn(ctx, c))
		return
	}
	a.attachResumable(ctx, resume.WebSocket(c, wsconn.PingInterval, wsconn.PingTimeout))
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
