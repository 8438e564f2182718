package agent

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"testing"
)

func TestAudience(t *testing.T) {
	for in, want := range map[string]string{
		"wss://relay.example.com":            "https://relay.example.com",
		"ws://127.0.0.1:8000/":               "http://127.0.0.1:8000",
		"wss://example.com/converge":         "https://example.com/converge",
		"https://already.example.com/prefix": "https://already.example.com/prefix",
	} {
		if got := Audience(in); got != want {
			t.Errorf("Audience(%q) = %q, want %q", in, got, want)
		}
	}
}

// TestGitHubOIDCFetch: the agent asks GitHub's token service with its
// bearer and the audience, and takes the value; any other answer is an
// errIDTokenRequest, retried like a network failure.
func TestGitHubOIDCFetch(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Authorization") != "Bearer job-bearer" || r.URL.Query().Get("audience") != "https://relay.example.com" {
			http.Error(w, "no", http.StatusForbidden)
			return
		}
		w.Write([]byte(`{"count":1,"value":"the.jwt.itself"}`))
	}))
	defer srv.Close()
	g := githubOIDC{url: srv.URL + "/token?api-version=2.0", bearer: "job-bearer"}
	tok, err := g.fetch(context.Background(), nil, "https://relay.example.com")
	if err != nil || tok != "the.jwt.itself" {
		t.Fatalf("fetch = %q, %v", tok, err)
	}
	g.bearer = "wrong"
	if _, err := g.fetch(context.Background(), nil, "https://relay.example.com"); !errors.Is(err, errIDTokenRequest) {
		t.Errorf("a refused request: %v, want errIDTokenRequest", err)
	}
}
