package wsproxy

import (
	"crypto/tls"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"testing"
)

// TestSessionFileResumes: a TLS session stored by one run (one
// SessionFile) is resumed by the next (another SessionFile on the same
// file), and the file is private to its user.
func TestSessionFileResumes(t *testing.T) {
	srv := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "ok") }))
	t.Cleanup(srv.Close)
	roots := srv.Client().Transport.(*http.Transport).TLSClientConfig.RootCAs
	path := filepath.Join(t.TempDir(), "cache", "tls-sessions.json")
	handshake := func() bool {
		t.Helper()
		c, err := tls.Dial("tcp", srv.Listener.Addr().String(), &tls.Config{
			ServerName: "example.com", RootCAs: roots, NextProtos: []string{"http/1.1"},
			ClientSessionCache: NewSessionFile(path), // a fresh one each time, as a new run has
		})
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		// The ticket comes after the handshake: read the answer to take it in.
		io.WriteString(c, "GET / HTTP/1.1\r\nHost: example.com\r\n\r\n")
		if _, err := c.Read(make([]byte, 1)); err != nil {
			t.Fatal(err)
		}
		return c.ConnectionState().DidResume
	}
	if handshake() {
		t.Fatal("the first connection resumed a session nobody stored")
	}
	if !handshake() {
		t.Error("the second run did not resume the session the first stored")
	}
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Errorf("session file mode %v, want 0600", fi.Mode().Perm())
	}
	// Another server name has no session.
	if _, ok := NewSessionFile(path).Get("other.example.com"); ok {
		t.Error("a session for a server never connected to")
	}
}
