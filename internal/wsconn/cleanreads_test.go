package wsconn

import (
	"bufio"
	"context"
	"encoding/binary"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/coder/websocket"
)

// TestCleanReadsDropsMaskedTail cuts a client's frame in the middle. The
// accepting side's websocket.NetConn returns the partial payload, still
// masked, with the error (the coder/websocket trap CleanReads exists for);
// through CleanReads the failing Read returns no bytes.
func TestCleanReadsDropsMaskedTail(t *testing.T) {
	type result struct {
		n   int
		err error
	}
	got := make(chan result, 1)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		c, err := websocket.Accept(w, r, &websocket.AcceptOptions{CompressionMode: websocket.CompressionDisabled})
		if err != nil {
			got <- result{err: err}
			return
		}
		nc := CleanReads(websocket.NetConn(context.Background(), c, websocket.MessageBinary))
		defer nc.Close()
		buf := make([]byte, 4096)
		total := 0
		for {
			n, err := nc.Read(buf)
			total += n
			if err != nil {
				got <- result{total, err}
				return
			}
		}
	}))
	defer srv.Close()

	conn, err := net.Dial("tcp", strings.TrimPrefix(srv.URL, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	io.WriteString(conn, "GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"+
		"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil || resp.StatusCode != http.StatusSwitchingProtocols {
		t.Fatalf("upgrade: %v %v", resp, err)
	}
	// A binary frame announcing 1000 payload bytes, of which 500 arrive.
	frame := []byte{0x82, 0x80 | 126, 0, 0, 1, 2, 3, 4}
	binary.BigEndian.PutUint16(frame[2:], 1000)
	frame = append(frame, make([]byte, 500)...)
	conn.Write(frame)
	conn.(*net.TCPConn).CloseWrite()

	r := <-got
	if r.err == nil || r.n != 0 {
		t.Fatalf("read %d bytes then %v; want no bytes of the cut frame, and an error", r.n, r.err)
	}
}
