package server

import (
	"context"
	"io"
	"net"
	"net/http"

	"github.com/coder/websocket"

	"github.com/converge-ci/converge/internal/rawstream"
	"github.com/converge-ci/converge/internal/wsconn"
)

// leg is one side of a relayed stream as the server holds it: a WebSocket
// (any client tool, or an agent that does not ask for raw streams), or a
// raw stream (internal/rawstream), which carries the bytes unframed so
// that two raw legs are spliced in the kernel. Exactly one field is set.
type leg struct {
	ws  *websocket.Conn
	raw net.Conn
}

// acceptLeg upgrades r to a raw stream when it asks for one, else to a
// WebSocket; protocol is the stream protocol chosen ("" for none).
func acceptLeg(w http.ResponseWriter, r *http.Request, protocol string) (leg, error) {
	if rawstream.Requested(r) {
		c, err := rawstream.Accept(w, r, protocol)
		return leg{raw: c}, err
	}
	var offer []string
	if protocol != "" {
		offer = []string{protocol}
	}
	c, err := wsconn.Accept(w, r, offer...)
	return leg{ws: c}, err
}

// held is what the server's set of connections holds for this leg, so
// that a drain closes it.
func (l leg) held() closeNower {
	if l.ws != nil {
		return l.ws
	}
	return rawHeld{l.raw}
}

// bytes is the leg's byte stream; for a WebSocket it lives until ctx ends
// or it is closed.
func (l leg) bytes(ctx context.Context) io.ReadWriteCloser {
	if l.ws != nil {
		// CleanReads: never forward the masked tail of a frame cut in the middle.
		return wsconn.CleanReads(websocket.NetConn(ctx, l.ws, websocket.MessageBinary))
	}
	return l.raw
}

// refuse ends the leg, telling a WebSocket peer why with code; a raw
// stream can only be closed.
func (l leg) refuse(code websocket.StatusCode, reason string) {
	if l.ws != nil {
		l.ws.Close(code, reason)
		return
	}
	l.raw.Close()
}

func (l leg) closeNow() { l.held().CloseNow() }

// Leg transports, as kind names them.
const (
	legRaw       = "raw"
	legWebSocket = "websocket"
)

// kind names the leg's transport for logs and metrics.
func (l leg) kind() string {
	if l.ws != nil {
		return legWebSocket
	}
	return legRaw
}

// rawHeld lets the set of connections close a raw stream.
type rawHeld struct{ net.Conn }

func (r rawHeld) CloseNow() error { return r.Close() }
