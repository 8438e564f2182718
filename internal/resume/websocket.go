//go:build !js

package resume

import (
	"context"
	"io"
	"sync"
	"time"

	"github.com/coder/websocket"

	"github.com/converge-ci/converge/internal/wsconn"
)

// WebSocket adapts c as a link: a byte stream in binary messages, with
// keepalive pings every interval; a ping unanswered within timeout closes
// it. Unlike a plain stream, a resumable link may treat a missing pong as
// death: its reader never stops reading for want of buffer space (the
// peer never sends more than the window), so pongs are always processed.
// Close closes c at once and waits for the pinger.
func WebSocket(c *websocket.Conn, interval, timeout time.Duration) io.ReadWriteCloser {
	ctx, cancel := context.WithCancel(context.Background())
	l := &wsLink{ReadWriteCloser: websocket.NetConn(ctx, c, websocket.MessageBinary), ws: c, cancel: cancel}
	l.wg.Add(1)
	go func() {
		defer l.wg.Done()
		wsconn.Keepalive(ctx, c, interval, timeout, func(error) { c.CloseNow() })
	}()
	return l
}

type wsLink struct {
	io.ReadWriteCloser
	ws     *websocket.Conn
	cancel context.CancelFunc
	once   sync.Once
	wg     sync.WaitGroup
}

// closeGracefully performs the WebSocket closing handshake, so that all
// sent data reaches the peer before the connection ends.
func (l *wsLink) closeGracefully() {
	l.ws.Close(websocket.StatusNormalClosure, "session finished")
}

func (l *wsLink) Close() error {
	l.once.Do(func() {
		l.cancel()
		l.ws.CloseNow()
		l.wg.Wait()
	})
	return nil
}
