package wire

import (
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

// TestPathsMatchPatterns: each built path, served by a ServeMux holding the
// patterns, reaches its own pattern with the ID and token intact.
func TestPathsMatchPatterns(t *testing.T) {
	tok := NewToken()
	for _, tc := range []struct {
		path, pattern, id, token string
	}{
		{AgentPath("myjob"), AgentPattern, "myjob", ""},
		{AgentPath("a.b_c-9"), AgentPattern, "a.b_c-9", ""},
		{StreamPath("myjob", tok), StreamPattern, "myjob", tok},
		{StreamPath("stream", tok), StreamPattern, "stream", tok},
		{ClientPath("myjob"), ClientPattern, "myjob", ""},
		{ClientPath("agent"), ClientPattern, "agent", ""},
		{TerminalPath("myjob"), TerminalPattern, "myjob", ""},
	} {
		mux := http.NewServeMux()
		var pattern, id, token string
		for _, p := range []string{AgentPattern, StreamPattern, ClientPattern, TerminalPattern} {
			mux.HandleFunc("GET "+p, func(w http.ResponseWriter, r *http.Request) {
				pattern, id, token = p, r.PathValue("id"), r.PathValue("token")
			})
		}
		mux.ServeHTTP(httptest.NewRecorder(), httptest.NewRequest("GET", tc.path, nil))
		if pattern != tc.pattern || id != tc.id || token != tc.token {
			t.Errorf("GET %s routed to %q with id %q token %q; want %q with id %q token %q",
				tc.path, pattern, id, token, tc.pattern, tc.id, tc.token)
		}
	}
}

func TestClientID(t *testing.T) {
	for _, tc := range []struct{ path, id, err string }{
		{"/client/myjob", "myjob", ""},
		{"/prefix/client/myjob", "myjob", ""},
		{"/client/x/client/y", "y", ""},
		{"/agent/myjob", "", "it must end in /client/ID"},
		{"", "", "it must end in /client/ID"},
		{"/client/", "", "rendezvous ID is empty"},
		{"/client/bad id", "", `has ' ' at position 4`},
		{"/client/myjob/", "", `has '/'`},
		{"/client/.hidden", "", "must not start with '.'"},
	} {
		id, err := ClientID(tc.path)
		if tc.err == "" && (err != nil || id != tc.id) {
			t.Errorf("ClientID(%q) = %q, %v; want %q", tc.path, id, err, tc.id)
		}
		if tc.err != "" && (err == nil || !strings.Contains(err.Error(), tc.err)) {
			t.Errorf("ClientID(%q) = %q, %v; want an error containing %q", tc.path, id, err, tc.err)
		}
	}
}

// TestClientPathRoundTrip: ClientID undoes ClientPath for every valid ID,
// with or without a prefix before the path.
func TestClientPathRoundTrip(t *testing.T) {
	for _, id := range []string{"myjob", NewID(), "a", strings.Repeat("x", MaxIDLength), "client", "A.b_C-1"} {
		for _, prefix := range []string{"", "/converge", "/client"} {
			got, err := ClientID(prefix + ClientPath(id))
			if err != nil || got != id {
				t.Errorf("ClientID(%q) = %q, %v; want %q", prefix+ClientPath(id), got, err, id)
			}
		}
	}
}

// FuzzClientID: whatever path ClientID accepts ends in the ClientPath of
// the valid ID it returns.
func FuzzClientID(f *testing.F) {
	for _, s := range []string{"/client/myjob", "/p/client/a-b", "/client/", "/client/a/b", "client/x", "/client/\x00", ""} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, path string) {
		id, err := ClientID(path)
		if err != nil {
			return
		}
		if ValidID(id) != nil || !strings.HasSuffix(path, ClientPath(id)) {
			t.Fatalf("ClientID(%q) = %q: not a valid ID ending the path", path, id)
		}
	})
}

func TestSchemes(t *testing.T) {
	for ws, http := range map[string]string{"ws": "http", "wss": "https", "ftp": "ftp"} {
		if got := HTTPScheme(ws); got != http {
			t.Errorf("HTTPScheme(%q) = %q, want %q", ws, got, http)
		}
		if got := WebSocketScheme(http); got != ws {
			t.Errorf("WebSocketScheme(%q) = %q, want %q", http, got, ws)
		}
	}
}
