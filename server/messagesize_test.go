package server

import (
	"bytes"
	"context"
	"io"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/converge-ci/converge/internal/wire"
	"github.com/converge-ci/converge/internal/wsconn"
)

// sized is a valid status message padded with trailing spaces (which JSON
// ignores) to n bytes.
func sized(t *testing.T, n int) []byte {
	t.Helper()
	b, err := wire.Encode(wire.Message{Type: wire.TypeStatus, Status: &wire.Status{Sessions: 1}})
	if err != nil {
		t.Fatal(err)
	}
	return append(b, bytes.Repeat([]byte(" "), n-len(b))...)
}

// TestControlMessageSizeLimit pins what README and docs/protocol.md
// promise: a control message of wire.MaxMessageSize bytes is read, and a
// larger one closes the connection with 1009 (message too big), which
// coder/websocket sends when the read limit is hit.
func TestControlMessageSizeLimit(t *testing.T) {
	r := runServer(t)
	a := dialAgent(t, r.ws(), "big-1", wire.Info{})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()

	if err := a.ws.Write(ctx, websocket.MessageText, sized(t, wire.MaxMessageSize)); err != nil {
		t.Fatal(err)
	}
	// Still connected: a client gets its stream through this agent.
	dialed := make(chan struct{})
	go func() { defer close(dialed); a.echoStream(t, r.ws()) }()
	c, err := wsconn.Dial(ctx, r.ws()+"/client/big-1", wsconn.Options{})
	<-dialed
	if err != nil {
		t.Fatalf("client after a %d-byte control message: %v", wire.MaxMessageSize, err)
	}
	echoes(t, "client", c)

	if err := a.ws.Write(ctx, websocket.MessageText, sized(t, wire.MaxMessageSize+1)); err != nil {
		t.Fatal(err)
	}
	_, _, err = a.ws.Read(ctx)
	if got := websocket.CloseStatus(err); got != websocket.StatusMessageTooBig {
		t.Errorf("after a %d-byte control message: read %v (close status %d), want close %d (message too big)",
			wire.MaxMessageSize+1, err, got, websocket.StatusMessageTooBig)
	}
}

// TestStreamMessagesAnySize: the relay reads stream messages through
// NetConn, piece by piece into its buffer, so it takes a message of any
// size (here one of 3 MiB) with no read limit to trip.
func TestStreamMessagesAnySize(t *testing.T) {
	r := runServer(t)
	a := dialAgent(t, r.ws(), "big-2", wire.Info{})
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	dialed := make(chan struct{})
	go func() { defer close(dialed); a.echoStream(t, r.ws()) }()
	c, err := wsconn.Dial(ctx, r.ws()+"/client/big-2", wsconn.Options{})
	<-dialed
	if err != nil {
		t.Fatal(err)
	}
	defer c.CloseNow()
	msg := bytes.Repeat([]byte("0123456789abcdef"), 3<<20/16)
	wrote := make(chan error, 1)
	go func() { wrote <- c.Write(ctx, websocket.MessageBinary, msg) }()
	back := make([]byte, len(msg))
	if _, err := io.ReadFull(websocket.NetConn(ctx, c, websocket.MessageBinary), back); err != nil {
		t.Fatalf("read the echo of a %d-byte message: %v", len(msg), err)
	}
	if err := <-wrote; err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(back, msg) {
		t.Error("the echo differs from the message")
	}
}
