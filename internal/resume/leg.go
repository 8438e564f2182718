//go:build !js

package resume

import (
	"io"
	"net"

	"github.com/coder/websocket"

	"github.com/converge-ci/converge/internal/leg"
	"github.com/converge-ci/converge/internal/wsconn"
)

// Link adapts c, a leg of a resumable stream, as a link, framed for its
// transport: Stream on a raw stream, WebSocket on a WebSocket, with the
// intervals of wsconn (PingInterval, PingTimeout).
func Link(c *leg.Conn) io.ReadWriteCloser { return c.Carry(links{}) }

// links frames a leg as a link (leg.Framings).
type links struct{}

func (links) Raw(c net.Conn) io.ReadWriteCloser { return Stream(c, wsconn.PingInterval) }

func (links) WebSocket(c *websocket.Conn) io.ReadWriteCloser {
	return WebSocket(c, wsconn.PingInterval, wsconn.PingTimeout)
}
