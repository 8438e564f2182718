package wsconn

import (
	"context"
	"net"
	"sync"

	"github.com/coder/websocket"
)

// NetConn returns c as a net.Conn carrying binary messages (see
// websocket.NetConn for reads, writes and deadlines). While it is open it
// pings the peer every PingInterval so that proxies and load balancers do
// not cut it when idle; an unanswered ping is not treated as death (see
// Keepalive). Close stops the pings, closes c, and waits for the pinger.
func NetConn(ctx context.Context, c *websocket.Conn) net.Conn {
	ctx, cancel := context.WithCancel(ctx)
	nc := &keptConn{Conn: websocket.NetConn(ctx, c, websocket.MessageBinary), cancel: cancel}
	nc.wg.Add(1)
	go func() {
		defer nc.wg.Done()
		Keepalive(ctx, c, PingInterval, PingTimeout, nil)
	}()
	return nc
}

type keptConn struct {
	net.Conn
	cancel context.CancelFunc
	once   sync.Once
	wg     sync.WaitGroup
}

func (k *keptConn) Close() error {
	var err error
	k.once.Do(func() {
		err = k.Conn.Close()
		k.cancel()
		k.wg.Wait()
	})
	return err
}
