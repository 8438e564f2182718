package server

import (
	"bufio"
	"encoding/base64"
	"encoding/binary"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/converge-ci/converge/internal/wire"
)

// TestControlBytesBehindTheRequest: an agent that sends its hello right
// behind its upgrade request, before the 101 (which net/http's reader has
// then read with the request), is registered all the same: the lean
// buffers (leanHijack) never drop what net/http's hold.
func TestControlBytesBehindTheRequest(t *testing.T) {
	r := runServer(t)
	c, err := net.Dial("tcp", strings.TrimPrefix(r.http(), "http://"))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	hello, err := wire.Encode(wire.Message{Type: wire.TypeHello, Hello: &wire.Hello{Version: "test"}})
	if err != nil {
		t.Fatal(err)
	}
	key := base64.StdEncoding.EncodeToString([]byte("0123456789abcdef"))
	req := "GET " + wire.AgentPath("eager") + " HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n" +
		"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: " + key + "\r\nSec-WebSocket-Protocol: " + wire.ControlProtocol + "\r\n\r\n"
	// A masked text frame (a client's frames are masked), mask all zero.
	frame := []byte{0x81, 0x80 | 126, 0, 0, 0, 0, 0, 0}
	binary.BigEndian.PutUint16(frame[2:], uint16(len(hello)))
	if _, err := c.Write(append(append([]byte(req), frame...), hello...)); err != nil {
		t.Fatal(err)
	}
	br := bufio.NewReader(c)
	resp, err := http.ReadResponse(br, nil)
	if err != nil || resp.StatusCode != http.StatusSwitchingProtocols {
		t.Fatalf("upgrade: %v, %v", resp, err)
	}
	var h [2]byte
	if _, err := io.ReadFull(br, h[:]); err != nil {
		t.Fatal(err)
	}
	n := int(h[1] & 0x7f)
	if n == 126 {
		var l [2]byte
		io.ReadFull(br, l[:])
		n = int(binary.BigEndian.Uint16(l[:]))
	}
	body := make([]byte, n)
	if _, err := io.ReadFull(br, body); err != nil {
		t.Fatal(err)
	}
	if m, err := wire.Decode(body); err != nil || m.Type != wire.TypeWelcome {
		t.Fatalf("after a hello sent behind the request: %q, %v; want the welcome", body, err)
	}
}
