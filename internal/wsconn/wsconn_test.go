package wsconn

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
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
