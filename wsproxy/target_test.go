package wsproxy

import (
	"context"
	"errors"
	"net"
	"testing"

	"github.com/converge-ci/converge/internal/wire"
)

// TestParseTarget: the errors a user sees name the URL and say what to fix.
func TestParseTarget(t *testing.T) {
	for _, tc := range []struct{ url, err string }{
		{"ws://localhost:8000/client/myjob", ""},
		{"wss://relay.example.com/converge/client/a.b_c-9", ""},
		{"ws://h/client/myjob?x=1", ""},
		{"http://localhost:1/client/x", `bad URL "http://localhost:1/client/x": use ws:// or wss:// instead of http://`},
		{"localhost:1/client/x", `bad URL "localhost:1/client/x": it must start with ws:// or wss://`},
		{"ws:///client/x", `bad URL "ws:///client/x": no host`},
		{"ws://localhost:1/agent/x", `bad URL "ws://localhost:1/agent/x": it must end in /client/ID, with the ID the agent printed`},
		{"ws://localhost:1/client/bad id", `bad URL "ws://localhost:1/client/bad id": rendezvous ID "bad id" has ' ' at position 4; use letters, digits, '.', '_' and '-'`},
		{"ws://localhost:1/client/", `bad URL "ws://localhost:1/client/": rendezvous ID is empty`},
	} {
		got, err := ParseTarget(tc.url)
		switch {
		case tc.err == "" && err != nil:
			t.Errorf("ParseTarget(%q) = %v, want no error", tc.url, err)
		case tc.err == "" && got.String() != tc.url:
			t.Errorf("ParseTarget(%q).String() = %q, want the URL as given", tc.url, got)
		case tc.err != "" && (err == nil || err.Error() != tc.err):
			t.Errorf("ParseTarget(%q) = %v\nwant error %s", tc.url, err, tc.err)
		}
	}
}

// TestParseTargetRoundTrip: a URL built from a base and wire.ClientPath
// parses for every valid ID.
func TestParseTargetRoundTrip(t *testing.T) {
	for _, base := range []string{"ws://127.0.0.1:8000", "wss://relay.example.com/prefix"} {
		for _, id := range []string{"myjob", wire.NewID(), "client"} {
			raw := base + wire.ClientPath(id)
			if got, err := ParseTarget(raw); err != nil || got.String() != raw {
				t.Errorf("ParseTarget(%q) = %q, %v; want it back unchanged", raw, got, err)
			}
		}
	}
}

// TestZeroTargetRefused: a Target not made by ParseTarget dials nothing.
func TestZeroTargetRefused(t *testing.T) {
	if _, err := Dial(context.Background(), Target{}, Options{}); !errors.Is(err, errNoTarget) {
		t.Errorf("Dial(Target{}) = %v, want %v", err, errNoTarget)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	if err := Serve(context.Background(), ln, Target{}, nil, Options{}); !errors.Is(err, errNoTarget) {
		t.Errorf("Serve(Target{}) = %v, want %v", err, errNoTarget)
	}
}
