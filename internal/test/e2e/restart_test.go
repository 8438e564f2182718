package e2e

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"io"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/converge-ci/converge/internal/test/sshtest"
	"github.com/converge-ci/converge/internal/wire"
	"github.com/converge-ci/converge/internal/wsconn"
	"github.com/converge-ci/converge/server"
)

// rogue asks for an ID every 50 ms with no secret or a forged one, as an
// attacker racing a server restart would, and holds the ID whenever it
// gets it (it answers no clients: it has no SSH server).
type rogue struct {
	mu    sync.Mutex
	state rogueState
}

type rogueState struct {
	holding     bool
	wins        int    // welcomes got
	replaced    int    // held connections closed with 4001
	refused     int    // refusals got
	lastRefusal string // the latest refusal's message
}

// startRogue runs a rogue against base (ws://...) until the test ends.
func startRogue(t *testing.T, base, id string) *rogue {
	r := &rogue{}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		tick := time.NewTicker(50 * time.Millisecond)
		defer tick.Stop()
		for attempt := 0; ; attempt++ {
			r.try(ctx, base, id, attempt%2 == 1)
			select {
			case <-ctx.Done():
				return
			case <-tick.C:
			}
		}
	}()
	t.Cleanup(func() { cancel(); <-done })
	return r
}

func (r *rogue) snapshot() rogueState {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.state
}

func (r *rogue) update(f func(*rogueState)) {
	r.mu.Lock()
	defer r.mu.Unlock()
	f(&r.state)
}

// try asks for id once, with a forged secret if forge, and holds the ID
// until the server closes the connection if it gets it.
func (r *rogue) try(ctx context.Context, base, id string, forge bool) {
	hdr := http.Header{}
	if forge {
		var b [wire.TokenLength / 2]byte
		rand.Read(b[:])
		hdr.Set(wire.SecretHeader, hex.EncodeToString(b[:]))
	}
	dctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	c, err := wsconn.Dial(dctx, base+wire.AgentPath(id), wsconn.Options{Header: hdr, Subprotocols: []string{wire.ControlProtocol}})
	cancel()
	var re *wsconn.RefusedError
	if errors.As(err, &re) {
		r.update(func(s *rogueState) { s.refused++; s.lastRefusal = re.Message })
	}
	if err != nil {
		return // refused, or the server is down
	}
	defer c.CloseNow()
	hello, _ := wire.Encode(wire.Message{Type: wire.TypeHello, Hello: &wire.Hello{Version: "rogue"}})
	if err := c.Write(ctx, websocket.MessageText, hello); err != nil {
		return
	}
	if _, b, err := c.Read(ctx); err != nil {
		return
	} else if m, err := wire.Decode(b); err != nil || m.Type != wire.TypeWelcome {
		return
	}
	r.update(func(s *rogueState) { s.holding = true; s.wins++ })
	var rerr error
	for rerr == nil {
		_, _, rerr = c.Read(ctx) // dial requests, refreshed secrets: ignored
	}
	r.update(func(s *rogueState) {
		s.holding = false
		if websocket.CloseStatus(rerr) == wsconn.CodeReplaced {
			s.replaced++
		}
	})
}

// TestRestartRaceRealAgentWinsBack is the restart race of issue 11, with
// the real converge binary: the server is killed while a rogue retries
// the agent's ID every 50 ms, and comes back on the same state directory
// and address. Whether the rogue gets the ID first (the agent's network
// is away until it has) or the two race, the real agent ends up holding
// its ID, the rogue is refused from then on, connected or reserved, and
// ssh with the real host key in known_hosts reaches the real agent.
func TestRestartRaceRealAgentWinsBack(t *testing.T) {
	for _, tc := range []struct {
		name       string
		rogueFirst bool
	}{{"rogue first", true}, {"race", false}} {
		t.Run(tc.name, func(t *testing.T) {
			state := t.TempDir()
			srv := startServerProc(t, "--state-dir", state)
			direct := &relay{URL: "ws://" + srv.addr, HTTP: "http://" + srv.addr, User: "ciuser", Addr: srv.addr}
			p := newProxy(t, srv.addr) // the agent's network
			c := sshtest.New(t)
			a := startAgent(t, viaProxy(p), "victim", c)
			tgt := direct.target("victim")
			c.SSH(tgt, 0, "true")

			if tc.rogueFirst {
				p.Retarget(deadAddr(t))
			}
			srv.kill()
			p.Cut()
			rg := startRogue(t, direct.URL, "victim")
			srv = startServerProc(t, "--state-dir", state, "--addr", srv.addr)
			if tc.rogueFirst {
				waitFor(t, "the rogue to get the ID", func() bool { return rg.snapshot().wins > 0 })
				p.Retarget(srv.addr)
				waitFor(t, "the real agent to take its ID back", func() bool { return rg.snapshot().replaced > 0 })
			}
			realHolds := func(refusal string) func() bool {
				n := rg.snapshot().refused
				return func() bool {
					s := rg.snapshot()
					return !s.holding && s.refused > n+3 && strings.Contains(s.lastRefusal, refusal)
				}
			}
			waitFor(t, "the rogue refused while the real agent holds the ID", realHolds("already used"))
			wins := rg.snapshot().wins
			if got := c.SSH(tgt, 0, "echo real"); strings.TrimSpace(got.Stdout) != "real" {
				t.Fatalf("ssh after the restart: stdout %q, want real", got.Stdout)
			}

			// The agent's link drops: its ID stays reserved for it, not for
			// the rogue, and it takes it back.
			p.Retarget(deadAddr(t))
			p.Cut()
			waitFor(t, "the rogue refused while the ID is reserved for the agent", realHolds("reserved"))
			p.Retarget(srv.addr)
			waitFor(t, "the rogue refused once the agent is back", realHolds("already used"))
			if got := c.SSH(tgt, 0, "echo again"); strings.TrimSpace(got.Stdout) != "again" {
				t.Errorf("ssh after the agent's link came back: stdout %q, want again", got.Stdout)
			}
			if s := rg.snapshot(); s.wins != wins {
				t.Errorf("the rogue got the ID %d more times after the real agent took it back", s.wins-wins)
			}
			if n := strings.Count(a.Out.String(), "registered as"); n != 1 {
				t.Errorf("agent printed its instructions %d times, want once:\n%s", n, a.Out.String())
			}
		})
	}
}

// TestAgentRetriesConflictAfterRestart: a server restarted with another
// key cannot check the agent's secret, and another agent took the ID. The
// agent, refused with 409 on re-registration, keeps trying instead of
// exiting, and gets its ID once the other is gone and its reservation
// expired.
func TestAgentRetriesConflictAfterRestart(t *testing.T) {
	srv := newRestartableServer(t, func(c *server.Config) { c.Grace = 2 * time.Second })
	p := newProxy(t, srv.Addr())
	c := sshtest.New(t)
	startAgent(t, viaProxy(p), "taken", c)

	p.Retarget(deadAddr(t))
	srv.kill()
	srv.start() // a key of its own: the agent's secret proves nothing here
	p.Cut()
	base := "http://" + srv.Addr()
	other := holdID(t, "ws://"+srv.Addr(), "taken")
	p.Retarget(srv.Addr())
	waitFor(t, "the agent to be refused with 409", func() bool {
		return metric(t, base, `converge_refusals_total{endpoint="agent",reason="id_in_use"}`) >= 1
	})
	other.CloseNow()
	// The other's ID stays reserved for it for the grace period: nobody
	// holds it meanwhile, then the agent does.
	waitFor(t, "the other agent gone", func() bool { return clientStatus(base, "taken") == http.StatusNotFound })
	waitFor(t, "the agent to get its ID once the reservation expired", func() bool { return clientStatus(base, "taken") != http.StatusNotFound })
	c.SSH(viaProxy(p).target("taken"), 0, "true")
}

// holdID registers as id at base with a bare control connection, as
// another agent would, and returns the connection.
func holdID(t *testing.T, base, id string) *websocket.Conn {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := wsconn.Dial(ctx, base+wire.AgentPath(id), wsconn.Options{Subprotocols: []string{wire.ControlProtocol}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.CloseNow() })
	hello, _ := wire.Encode(wire.Message{Type: wire.TypeHello, Hello: &wire.Hello{Version: "other"}})
	if err := c.Write(ctx, websocket.MessageText, hello); err != nil {
		t.Fatal(err)
	}
	if _, b, err := c.Read(ctx); err != nil {
		t.Fatal(err)
	} else if m, err := wire.Decode(b); err != nil || m.Type != wire.TypeWelcome {
		t.Fatalf("got %q, %v; want welcome", m.Type, err)
	}
	return c
}

// metric is the value of the series named exactly so on base's /metrics,
// or -1 when absent.
func metric(t *testing.T, base, series string) float64 {
	t.Helper()
	resp, err := http.Get(base + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	for line := range strings.Lines(string(b)) {
		if v, ok := strings.CutPrefix(line, series+" "); ok {
			if f, err := strconv.ParseFloat(strings.TrimSpace(v), 64); err == nil {
				return f
			}
		}
	}
	return -1
}
