package agent

import (
	"context"
	"io"
	"time"

	"github.com/converge-ci/converge/internal/leg"
	"github.com/converge-ci/converge/internal/resume"
	"github.com/converge-ci/converge/internal/wire"
)

// wsOnlyFor is how long the agent dials streams as WebSockets after the
// server (or a proxy in front of it) did not switch to a raw stream,
// before it asks again (the server may have been upgraded meanwhile).
const wsOnlyFor = 10 * time.Minute

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
func (a *Agent) openStream(ctx context.Context, token string, raw bool) (*leg.Conn, error) {
	url := a.cfg.Server + wire.StreamPath(a.cfg.ID, token)
	dctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	defer cancel()
	return leg.Dial(dctx, url, leg.DialOptions{Protocols: []string{wire.StreamProtocol}, Raw: raw, Fallback: a.raw, Logger: a.log})
}

// serveStream hands c, a stream to one client who negotiated protocol
// with the server, to the SSH server: at once for a plain stream, through
// the resume layer for a resumable one. (The server assigns a raw idle
// stream to resumable clients only, see leg.Conn.Carries.)
func (a *Agent) serveStream(ctx context.Context, c *leg.Conn, protocol string) {
	if protocol != resume.Protocol {
		a.ln.deliver(c.NetConn(ctx))
		return
	}
	a.attachResumable(ctx, resume.Link(c))
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
