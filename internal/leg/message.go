package leg

import (
	"context"
	"errors"
	"time"

	"github.com/coder/websocket"

	"github.com/converge-ci/converge/internal/wire"
	"github.com/converge-ci/converge/internal/wsconn"
)

// WriteMessage writes m, a control message that goes before the stream's
// bytes (wire.TypeAssign), on c within ctx: a text message on a
// WebSocket, a record (wire.AppendRecord) on a raw stream. On a raw
// stream ctx's deadline bounds the write, and c's read and write
// deadlines are cleared afterwards.
func (c *Conn) WriteMessage(ctx context.Context, m wire.Message) error {
	if c.ws != nil {
		b, err := wire.Encode(m)
		if err != nil {
			return err
		}
		return c.ws.Write(ctx, websocket.MessageText, b)
	}
	b, err := wire.AppendRecord(nil, m)
	if err != nil {
		return err
	}
	deadline, _ := ctx.Deadline()
	c.raw.SetDeadline(deadline)
	_, err = c.raw.Write(b)
	c.raw.SetDeadline(time.Time{})
	return err
}

// ReadMessage reads the control message that goes before the stream's
// bytes on c: a text message on a WebSocket, a record (wire.ReadRecord)
// on a raw stream. Meanwhile a WebSocket pings its peer and is judged
// dead by a missing pong (nothing else is in flight to excuse a slow
// one); a raw stream's TCP keepalives judge it. On an error c is closed,
// also when ctx ends first; a WebSocket peer that sent a binary message,
// or one that does not decode, is told why with close code
// wsconn.CodeRefused.
func (c *Conn) ReadMessage(ctx context.Context) (m wire.Message, err error) {
	if c.ws != nil {
		return c.readWebSocketMessage(ctx)
	}
	stop := context.AfterFunc(ctx, func() { c.raw.Close() })
	defer func() {
		if !stop() || err != nil {
			c.raw.Close()
			if err == nil {
				err = ctx.Err()
			}
		}
	}()
	return wire.ReadRecord(c.raw)
}

func (c *Conn) readWebSocketMessage(ctx context.Context) (m wire.Message, err error) {
	ws := c.ws
	defer func() {
		if err != nil {
			ws.CloseNow()
		}
	}()
	ws.SetReadLimit(wire.MaxMessageSize)
	kctx, stop := context.WithCancel(ctx)
	kdone := make(chan struct{})
	go func() {
		defer close(kdone)
		wsconn.Keepalive(kctx, ws, wsconn.PingInterval, wsconn.PingTimeout, func(error) { ws.CloseNow() })
	}()
	defer func() { stop(); <-kdone }()
	typ, b, err := ws.Read(ctx)
	if err != nil {
		return wire.Message{}, err
	}
	if typ != websocket.MessageText {
		ws.Close(wsconn.CodeRefused, "expected a control message, not bytes")
		return wire.Message{}, errors.New("binary message where a control message was due")
	}
	m, err = wire.Decode(b)
	if err != nil {
		ws.Close(wsconn.CodeRefused, wsconn.Sanitize(err.Error()))
		return wire.Message{}, err
	}
	return m, nil
}
