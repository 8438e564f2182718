package agent

import (
	"context"
	"fmt"
	"sync"

	"github.com/converge-ci/converge/internal/leg"
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
// to any client. notIdle is called once the stream is no longer idle
// (assigned, or ended).
func (a *Agent) poolStream(idle, ctx context.Context, token string, notIdle func()) {
	var once sync.Once
	defer once.Do(notIdle)
	c, err := a.openStream(idle, token, true)
	if err != nil {
		// The server grants another when it needs one; a client never
		// waits for this stream (it would be dialled back).
		a.log.Debug("cannot open an idle stream", "error", err)
		return
	}
	protocol, err := awaitAssign(idle, c)
	if err != nil {
		if idle.Err() == nil {
			a.log.Debug("idle stream ended", "error", err)
		}
		return
	}
	once.Do(notIdle)
	a.serveStream(ctx, c, protocol)
}

// awaitAssign waits on c, an idle stream, for the server's assignment
// (leg.Conn.ReadMessage: meanwhile a WebSocket pings the server and is
// judged dead by a missing pong, a raw stream by its TCP keepalives) and
// returns the protocol it names. A message that is not an assignment is
// refused with close code 4002. On an error, c is closed; also when ctx
// ends first.
func awaitAssign(ctx context.Context, c *leg.Conn) (protocol string, err error) {
	m, err := c.ReadMessage(ctx)
	if err != nil {
		return "", fmt.Errorf("wait for a client: %w", err)
	}
	if m.Type != wire.TypeAssign {
		err = fmt.Errorf("%w: %q message on an idle stream", wire.ErrInvalid, m.Type)
		c.Close(wsconn.CodeRefused, wsconn.Sanitize(err.Error()))
		return "", err
	}
	return m.Assign.Protocol, nil
}
