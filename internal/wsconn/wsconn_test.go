package wsconn

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"
)

func TestCheckURL(t *testing.T) {
	for _, tc := range []struct{ url, want string }{
		{"ws://host:1", ""},
		{"wss://host/prefix", ""},
		{"http://host", "use ws:// or wss://"},
		{"host:8000", "must start with ws://"},
		{"ws://", "no host"},
		{"ws://a b", "bad URL"},
	} {
		err := CheckURL(tc.url)
		if tc.want == "" && err != nil || tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)) {
			t.Errorf("CheckURL(%q) = %v, want %q", tc.url, err, tc.want)
		}
	}
}

// TestRefusal: a server that answers the upgrade with an HTTP error gives
// the caller a RefusedError carrying the server's sentence.
func TestRefusal(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.Error(w, `no agent is connected with ID "x"`, http.StatusNotFound)
	}))
	defer srv.Close()
	_, err := Dial(context.Background(), "ws"+strings.TrimPrefix(srv.URL, "http")+"/client/x", Options{})
	var re *RefusedError
	if !errors.As(err, &re) || re.Status != 404 || re.Message != `no agent is connected with ID "x"` {
		t.Fatalf("Dial = %v, want RefusedError 404 with the server's message", err)
	}
	if !strings.Contains(err.Error(), `404 no agent is connected with ID "x"`) {
		t.Errorf("error text %q does not show status and reason", err)
	}
}

// TestStreamMessagesUnlimited: a stream read through NetConn takes a
// message of any size (here 3 MiB, over the 1 MiB limit these docs once
// claimed), since NetConn reads it piece by piece and holds none of it.
func TestStreamMessagesUnlimited(t *testing.T) {
	msg := bytes.Repeat([]byte("0123456789abcdef"), 3<<20/16)
	got := make(chan []byte, 1)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		c, err := Accept(w, r)
		if err != nil {
			got <- nil
			return
		}
		nc := NetConn(r.Context(), c)
		defer nc.Close()
		b := make([]byte, len(msg))
		if _, err := io.ReadFull(nc, b); err != nil {
			t.Errorf("read: %v", err)
		}
		got <- b
	}))
	defer srv.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := Dial(ctx, "ws"+strings.TrimPrefix(srv.URL, "http"), Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer c.CloseNow()
	if err := c.Write(ctx, websocket.MessageBinary, msg); err != nil {
		t.Fatal(err)
	}
	if b := <-got; !bytes.Equal(b, msg) {
		t.Errorf("the accepting side read %d bytes of a %d-byte message, or other bytes", len(b), len(msg))
	}
}
