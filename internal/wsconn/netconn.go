package wsconn

import (
	"context"
	"net"
	"sync"

	"github.com/coder/websocket"
)

// NetConn returns c as a net.Conn carrying binary messages (see
// websocket.NetConn for reads, writes and deadlines). It removes c's read
// limit: messages of any size are read piece by piece. While it is open it
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

// CleanReads wraps nc, a websocket.NetConn, so that a Read that fails
// returns no bytes. coder/websocket (v1.8.15, msgReader.read) returns the
// bytes of a frame payload it could only partly read together with the
// error, and on the accepting side those bytes are still masked: garbage.
// A relay that forwarded them would end a dying stream with junk, which a
// resumable stream on the far side would try to parse. The connection is
// dead when this happens, so dropping the partial bytes loses nothing.
func CleanReads(nc net.Conn) net.Conn { return cleanReads{nc} }

type cleanReads struct{ net.Conn }

func (c cleanReads) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	if err != nil {
		return 0, err
	}
	return n, nil
}
