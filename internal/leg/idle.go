package leg

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"sync"
	"time"

	"github.com/coder/websocket"

	"github.com/converge-ci/converge/internal/wire"
	"github.com/converge-ci/converge/internal/wsconn"
)

// keepaliveWriteTimeout bounds the write of a keepalive record on an idle
// raw stream.
const keepaliveWriteTimeout = 10 * time.Second

// ErrSpokeEarly: the peer sent bytes on an idle raw stream before it was
// assigned.
var ErrSpokeEarly = errors.New("the agent sent bytes on an idle stream")

// Idle is a leg held unused until it is taken, as the server holds an
// agent's pooled streams: Wait reads it meanwhile, which answers a
// WebSocket peer's pings and notices either kind's end; Take stops the
// wait; Assign then writes the control message that puts the leg to use,
// and Relayed gives its bytes.
type Idle struct {
	c     *Conn
	mu    sync.Mutex
	taken bool
	first chan firstMessage // buffered 1: Wait's result, sent once
}

// firstMessage is what ended an idle leg's wait: on a WebSocket, the
// start of the peer's first message, or an error; on a raw stream, nil
// once the read was stopped by Take, or an error (the read is stopped
// before the assignment is written, so nothing of the peer's is read in
// it).
type firstMessage struct {
	typ websocket.MessageType
	r   io.Reader
	err error
}

// Idle holds c idle; see Idle.
func (c *Conn) Idle() *Idle { return &Idle{c: c, first: make(chan firstMessage, 1)} }

// Wait reads the idle leg until Take stops it or the leg ends, and
// returns nil once taken, or, on a WebSocket, when the peer began a
// message (ctx bounds that read); ErrSpokeEarly when the peer sent a byte
// on a raw stream; else why the leg ended. On a raw stream it sends a
// keepalive record (wire.Keepalive) whenever it has been quiet for
// keepalive, as the peer's pings keep an idle WebSocket through proxies.
// Call it once.
func (i *Idle) Wait(ctx context.Context, keepalive time.Duration) error {
	var m firstMessage
	if ws := i.c.ws; ws != nil {
		ws.SetReadLimit(-1) // as NetConn does: the relay reads messages piece by piece
		m.typ, m.r, m.err = ws.Reader(ctx)
	} else {
		m.err = i.waitRaw(keepalive)
	}
	i.first <- m
	return m.err
}

// waitRaw is Wait on a raw stream. It returns nil once taken: Take stops
// the read with a deadline in the past, and only waitRaw sets one, under
// the lock, while the leg is not taken.
func (i *Idle) waitRaw(keepalive time.Duration) error {
	c := i.c.raw
	var b [1]byte
	for {
		i.mu.Lock()
		taken := i.taken
		if !taken {
			c.SetReadDeadline(time.Now().Add(keepalive))
		}
		i.mu.Unlock()
		if taken {
			return nil
		}
		n, err := c.Read(b[:])
		switch {
		case n > 0:
			return ErrSpokeEarly
		case errors.Is(err, os.ErrDeadlineExceeded):
			c.SetWriteDeadline(time.Now().Add(keepaliveWriteTimeout))
			if _, err := c.Write(wire.Keepalive); err != nil {
				return fmt.Errorf("keep an idle stream: %w", err)
			}
		case err != nil:
			return err
		}
	}
}

// Take stops Wait's read of a raw stream (a WebSocket's goes on: its
// first message is the start of the stream). Call it once.
func (i *Idle) Take() {
	i.mu.Lock()
	defer i.mu.Unlock()
	i.taken = true
	if i.c.raw != nil {
		i.c.raw.SetReadDeadline(time.Unix(1, 0))
	}
}

// Assign writes m on the taken leg (Conn.WriteMessage) within ctx. On a
// raw stream it first waits for Wait to return, and returns its error
// instead when it failed.
func (i *Idle) Assign(ctx context.Context, m wire.Message) error {
	if i.c.raw != nil {
		if first := <-i.first; first.err != nil {
			return first.err
		}
	}
	return i.c.WriteMessage(ctx, m)
}

// Relayed is the taken leg's bytes, as Conn.Relayed gives them; on a
// WebSocket they start with the message whose arrival ended Wait.
func (i *Idle) Relayed(ctx context.Context) net.Conn {
	if i.c.ws == nil {
		return i.c.Relayed(ctx)
	}
	// CleanReads: never forward the masked tail of a frame cut in the middle.
	return wsconn.CleanReads(&pooledConn{Conn: websocket.NetConn(ctx, i.c.ws, websocket.MessageBinary), first: i.first})
}

// pooledConn is an idle WebSocket as the relay reads it once taken: first
// the message whose arrival ended the wait, which Wait's reader started,
// then the rest through the embedded NetConn.
type pooledConn struct {
	net.Conn
	first   <-chan firstMessage
	started bool
	r       io.Reader // the first message, until read to its end
}

func (c *pooledConn) Read(p []byte) (int, error) {
	if !c.started {
		c.started = true
		m := <-c.first
		switch {
		case m.err != nil:
			switch websocket.CloseStatus(m.err) {
			case websocket.StatusNormalClosure, websocket.StatusGoingAway:
				return 0, io.EOF // as NetConn reports it
			}
			return 0, m.err
		case m.typ != websocket.MessageBinary:
			c.Conn.Close()
			return 0, errors.New("the agent sent a text message on a stream")
		}
		c.r = m.r
	}
	if c.r != nil {
		n, err := c.r.Read(p)
		if errors.Is(err, io.EOF) {
			c.r, err = nil, nil
		}
		if n > 0 || err != nil {
			return n, err
		}
	}
	return c.Conn.Read(p)
}
