package agent

import (
	"context"
	"errors"
	"fmt"
	"net"

	"github.com/coder/websocket"

	"github.com/converge-ci/converge/internal/wire"
	"github.com/converge-ci/converge/internal/wsconn"
)

// Stream pools (control protocol v2): a server that pools asks the agent,
// with a pool message, to open a stream before any client needs it. The
// stream waits, idle, until the server assigns a client to it (an assign
// message on the stream itself, naming the client's protocol: a text
// message on a WebSocket, a record on a raw stream), and is
// then served like a stream dialled back for that client: the client
// does not wait for the agent to dial. The server decides how many idle
// streams there are and replaces them; the agent only opens what it was
// granted.

// poolStream opens the idle stream the server granted token for, waits
// for its assignment, and serves it. While idle the stream belongs to the
// control connection, which idle lives as long as; once assigned it lives
// under ctx, like a stream dialled back for a client. It asks for a raw
// stream, as for a resumable dial-back: the server assigns a raw idle
// stream only to a client speaking a stream protocol, and a WebSocket one
// to any client.
func (a *Agent) poolStream(idle, ctx context.Context, token string) {
	c, err := a.openStream(idle, token, true)
	if err != nil {
		// The server grants another when it needs one; a client never
		// waits for this stream (it would be dialled back).
		a.log.Debug("cannot open an idle stream", "error", err)
		return
	}
	var protocol string
	if c.ws != nil {
		protocol, err = awaitAssign(idle, c.ws)
	} else {
		protocol, err = awaitAssignRaw(idle, c.raw)
	}
	if err != nil {
		if idle.Err() == nil {
			a.log.Debug("idle stream ended", "error", err)
		}
		return
	}
	a.serveStream(ctx, c, protocol)
}

// awaitAssignRaw waits on c, an idle raw stream, for the server's
// assignment, a record (wire.ReadRecord) before the stream's bytes, and
// returns the protocol it names. c's TCP keepalives judge it meanwhile
// (see rawstream). On an error, c is closed; also when ctx ends first.
func awaitAssignRaw(ctx context.Context, c net.Conn) (protocol string, err error) {
	stop := context.AfterFunc(ctx, func() { c.Close() })
	defer func() {
		if !stop() || err != nil {
			c.Close()
			if err == nil {
				err = ctx.Err()
			}
		}
	}()
	m, err := wire.ReadRecord(c)
	if err == nil && m.Type != wire.TypeAssign {
		err = fmt.Errorf("%w: %q message on an idle stream", wire.ErrInvalid, m.Type)
	}
	if err != nil {
		return "", fmt.Errorf("wait for a client: %w", err)
	}
	return m.Assign.Protocol, nil
}

// awaitAssign waits on c, an idle stream, for the server's assignment and
// returns the protocol it names. Meanwhile it pings the server and judges
// c dead by a missing pong: an idle stream has no backpressure to excuse
// a slow pong, and the server replaces a stream that ends. A message that
// is not an assignment is refused with close code 4002. On an error, c is
// closed; also when ctx ended before the wait began.
func awaitAssign(ctx context.Context, c *websocket.Conn) (protocol string, err error) {
	defer func() {
		if err != nil {
			c.CloseNow()
		}
	}()
	c.SetReadLimit(wire.MaxMessageSize)
	kctx, stop := context.WithCancel(ctx)
	kdone := make(chan struct{})
	go func() {
		defer close(kdone)
		wsconn.Keepalive(kctx, c, wsconn.PingInterval, wsconn.PingTimeout, func(error) { c.CloseNow() })
	}()
	defer func() { stop(); <-kdone }()
	typ, b, err := c.Read(ctx)
	if err != nil {
		return "", fmt.Errorf("wait for a client: %w", err)
	}
	if typ != websocket.MessageText {
		c.Close(wsconn.CodeRefused, "an idle stream's first message must be an assignment")
		return "", errors.New("binary message on an idle stream")
	}
	m, err := wire.Decode(b)
	if err == nil && m.Type != wire.TypeAssign {
		err = fmt.Errorf("%w: %q message on an idle stream", wire.ErrInvalid, m.Type)
	}
	if err != nil {
		c.Close(wsconn.CodeRefused, wsconn.Sanitize(err.Error()))
		return "", err
	}
	return m.Assign.Protocol, nil
}
