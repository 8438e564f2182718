package agent

import (
	"errors"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/converge-ci/converge/internal/wire"
	"github.com/converge-ci/converge/internal/wsconn"
)

func TestFinalRefusal(t *testing.T) {
	for _, tc := range []struct {
		err   error
		final bool
	}{
		{&wsconn.RefusedError{Status: http.StatusConflict, Message: "reserved"}, true},
		{&wsconn.RefusedError{Status: http.StatusBadRequest}, true},
		{fmt.Errorf("dial: %w", &wsconn.RefusedError{Status: http.StatusConflict}), true},
		{&wsconn.RefusedError{Status: http.StatusTooManyRequests}, false},
		{&wsconn.RefusedError{Status: http.StatusBadGateway}, false},
		{errors.New("connection refused"), false},
		{nil, false},
	} {
		if got := finalRefusal(tc.err) != nil; got != tc.final {
			t.Errorf("finalRefusal(%v) = %v, want %v", tc.err, got, tc.final)
		}
	}
}

// TestBackoffStaysLow: however long the server is away, an agent retries
// at least every wire.ReconnectMax, so it is back within seconds of the server.
func TestBackoffStaysLow(t *testing.T) {
	b := wire.ReconnectMin
	for attempt := range 50 {
		d := wire.Jitter(b)
		if d < b/2 || d > b || d > wire.ReconnectMax {
			t.Fatalf("attempt %d: waited %v with backoff %v; want between %v and %v, at most %v", attempt, d, b, b/2, b, wire.ReconnectMax)
		}
		b = min(b*2, wire.ReconnectMax)
	}
	if b != wire.ReconnectMax || wire.ReconnectMax > 5*time.Second {
		t.Errorf("backoff settles at %v (cap %v); want a cap of a few seconds", b, wire.ReconnectMax)
	}
}

// TestReclaiming: a 409 is worth retrying only for an agent that was
// registered, within reclaimWindow of losing its link; every other
// refusal stays final.
func TestReclaiming(t *testing.T) {
	lost := time.Unix(1000, 0)
	conflict := &wsconn.RefusedError{Status: http.StatusConflict, Message: "in use"}
	for _, tc := range []struct {
		re   *wsconn.RefusedError
		lost time.Time
		at   time.Duration // after lost
		want bool
	}{
		{conflict, lost, time.Second, true},
		{conflict, lost, reclaimWindow - time.Second, true},
		{conflict, lost, reclaimWindow, false},
		{conflict, time.Time{}, time.Second, false}, // first registration
		{&wsconn.RefusedError{Status: http.StatusBadRequest}, lost, time.Second, false},
		{&wsconn.RefusedError{Status: http.StatusForbidden}, lost, time.Second, false},
	} {
		if got := reclaiming(tc.re, tc.lost, lost.Add(tc.at)); got != tc.want {
			t.Errorf("reclaiming(%d, lost %v, %v later) = %v, want %v", tc.re.Status, tc.lost, tc.at, got, tc.want)
		}
	}
	if err := refused(conflict, lost); !strings.Contains(err.Error(), "in use") || !strings.Contains(err.Error(), "take the ID back") {
		t.Errorf("giving up says %q; want the server's reason and that the agent tried to take the ID back", err)
	}
}

// TestServerURLKeepsItsPath: a server under a sub-path is given as
// wss://host/converge[/]; the agent keeps the path, to which it appends
// the endpoints' paths, and refuses what appending would break.
func TestServerURLKeepsItsPath(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"wss://example.com", "wss://example.com"},
		{"wss://example.com/converge", "wss://example.com/converge"},
		{"wss://example.com/converge/", "wss://example.com/converge"},
		{"ws://127.0.0.1:8080/a/b//", "ws://127.0.0.1:8080/a/b"},
		{"wss://example.com/converge?x=1", ""},
		{"wss://example.com/converge#top", ""},
		{"wss://example.com/?", ""},
	} {
		c := Config{Server: tc.in, Dir: t.TempDir()}
		err := c.Validate()
		switch {
		case tc.want == "" && err == nil:
			t.Errorf("Server %q: accepted as %q, want refused", tc.in, c.Server)
		case tc.want != "" && err != nil:
			t.Errorf("Server %q: %v", tc.in, err)
		case tc.want != "" && c.Server+wire.AgentPath("job") != tc.want+"/agent/job":
			t.Errorf("Server %q: agent dials %q, want %q", tc.in, c.Server+wire.AgentPath("job"), tc.want+"/agent/job")
		}
	}
}
