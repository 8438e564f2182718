//go:build !js

package resume

import (
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/converge-ci/converge/internal/test/faultproxy"
)

// TestWebSocketLinkDiesWithoutPong: a link whose network silently stops
// carrying anything (no reset, no FIN) is closed by its keepalive, so the
// session can move to a new link instead of waiting for TCP to give up.
func TestWebSocketLinkDiesWithoutPong(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		c, err := websocket.Accept(w, r, nil)
		if err != nil {
			return
		}
		// The far end reads (answering pings) until the test ends.
		io.Copy(io.Discard, websocket.NetConn(r.Context(), c, websocket.MessageBinary))
	}))
	defer srv.Close()
	p, err := faultproxy.New(strings.TrimPrefix(srv.URL, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()

	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	c, _, err := websocket.Dial(ctx, "ws://"+p.Addr(), nil)
	if err != nil {
		t.Fatal(err)
	}
	link := WebSocket(c, 50*time.Millisecond, 200*time.Millisecond)
	defer link.Close()
	if _, err := link.Write([]byte("hello")); err != nil {
		t.Fatal(err)
	}
	p.Pause()
	defer p.Resume()
	read := make(chan error, 1)
	go func() {
		_, err := link.Read(make([]byte, 1))
		read <- err
	}()
	select {
	case err := <-read:
		if err == nil {
			t.Fatal("read succeeded on a silent network")
		}
	case <-ctx.Done():
		t.Fatal("the link stayed open on a silent network; the keepalive should have closed it")
	}
}
