package bench

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/converge-ci/converge/internal/test/issuertest"
	"github.com/converge-ci/converge/internal/wire"
	"github.com/converge-ci/converge/internal/wsconn"
)

// registrationsN is how many bare agents each pass of the registration
// rows registers.
const registrationsN = 1000

// registrations measures how many agents per second register with an
// open server and with one that checks each agent's OIDC identity token
// (signature, issuer, audience, expiry, rules; keys cached after the
// first token), one at a time and 16 at once.
func registrations(t *testing.T, tb *table) {
	t.Run("registrations", func(t *testing.T) {
		is := issuertest.Start(t)
		open := startServer(t, "--max-agents-per-addr=-1")
		oidc := startServer(t, "--max-agents-per-addr=-1", "--oidc-issuer", is.URL, "--oidc-allow", "repository=acme/*", "--oidc-audience", "bench")
		s := tb.add(fmt.Sprintf("Registration policy: bare agents registered per second (upgrade, hello, welcome, close), %d per pass, median of 3 passes", registrationsN),
			"oidc", "open", "oidc/open")
		for i, c := range []struct {
			what    string
			workers int
			fresh   bool // a token never seen (a new job); else one admitted before (a reconnection)
		}{{"new jobs, 1 at a time", 1, true}, {"new jobs, 16 at a time", 16, true}, {"reconnections, 16 at a time", 16, false}} {
			ci := i // IDs differ between cases: a closed agent leaves its ID reserved
			var o, p []float64
			for pass := range 3 {
				tokens := make([]string, registrationsN)
				for i := range tokens {
					claims := is.GitHub("acme/app", "bench")
					if c.fresh {
						claims["run_id"] = fmt.Sprintf("%d-%d-%d", c.workers, pass, i)
					}
					tokens[i] = is.Sign(claims)
				}
				if !c.fresh && pass == 0 {
					registerRate(t, oidc, tokens, fmt.Sprintf("w%d", ci), c.workers) // admitted once before
				}
				p = append(p, registerRate(t, oidc, tokens, fmt.Sprintf("o%d-%d", ci, pass), c.workers))
				o = append(o, registerRate(t, open, nil, fmt.Sprintf("p%d-%d", ci, pass), c.workers))
			}
			a, b := medianF(p), medianF(o)
			r := a / b
			s.add(row{what: c.what, a: fmt.Sprintf("%.0f/s", a), b: fmt.Sprintf("%.0f/s", b),
				comp: fmt.Sprintf("%.2f", r), target: ">= 0.8", verdict: verdict(r >= 0.8)})
			t.Logf("registrations, %s: oidc %.0f/s, open %.0f/s, ratio %.2f", c.what, a, b, r)
		}
		tb.notes = append(tb.notes, "Registration policy: the OIDC server checks an RS256 identity token from a test issuer on 127.0.0.1 at every registration, its keys fetched once. New jobs present tokens never seen (a signature check each); reconnections present tokens admitted before (cached until they expire). Open and OIDC passes alternate; the load generator shares the machine's cores with the server.")
	})
}

// registerRate registers registrationsN bare agents with s, workers at a time, each closed once welcomed, and
// returns registrations per second. Agent i presents tokens[i] when
// tokens is not nil.
func registerRate(t *testing.T, s *serverProc, tokens []string, prefix string, workers int) float64 {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	hello, err := wire.Encode(wire.Message{Type: wire.TypeHello, Hello: &wire.Hello{Version: "bench"}})
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	errs := make(chan error, workers)
	start := time.Now()
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := w; i < registrationsN; i += workers {
				id := fmt.Sprintf("%s-%05d", prefix, i)
				hdr := http.Header{}
				if tokens != nil {
					hdr.Set(wire.IDTokenHeader, tokens[i])
				}
				c, err := wsconn.Dial(ctx, s.URL()+wire.AgentPath(id), wsconn.Options{Subprotocols: []string{wire.ControlProtocol}, Header: hdr})
				if err != nil {
					errs <- fmt.Errorf("register %s: %w", id, err)
					return
				}
				err = c.Write(ctx, websocket.MessageText, hello)
				if err == nil {
					_, _, err = c.Read(ctx)
				}
				c.CloseNow()
				if err != nil {
					errs <- fmt.Errorf("welcome %s: %w", id, err)
					return
				}
			}
		}()
	}
	wg.Wait()
	d := time.Since(start)
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	return float64(registrationsN) / d.Seconds()
}

func medianF(v []float64) float64 {
	s := append([]float64(nil), v...)
	for i := range s {
		for j := i + 1; j < len(s); j++ {
			if s[j] < s[i] {
				s[i], s[j] = s[j], s[i]
			}
		}
	}
	return s[len(s)/2]
}

// TestBenchRegistrations prints only the registration policy rows.
func TestBenchRegistrations(t *testing.T) {
	if !*flagTable {
		t.Skip("the benchmark table runs with -bench-table")
	}
	tb := &table{header: machine()}
	registrations(t, tb)
	fmt.Print("\n" + tb.String())
}

// herdTokens measures the restart herd of sc.agents synthetic agents
// with a server that checks an identity token at every registration,
// each agent presenting its own (a GitLab job's CONVERGE_ID_TOKEN): the
// new server has seen none of them, so each costs a signature check.
func herdTokens(t *testing.T, tb *table, sc scaleConfig) {
	t.Run("herd-tokens", func(t *testing.T) {
		is := issuertest.Start(t)
		file := filepath.Join(t.TempDir(), "tokens")
		var b strings.Builder
		for i := range sc.agents {
			c := is.GitHub("acme/app", "bench")
			c["run_id"] = strconv.Itoa(i)
			b.WriteString(is.Sign(c) + "\n")
		}
		if err := os.WriteFile(file, []byte(b.String()), 0o600); err != nil {
			t.Fatal(err)
		}
		srv := startServer(t, "--oidc-issuer", is.URL, "--oidc-allow", "repository=acme/*", "--oidc-audience", "bench")
		f := startFleet(t, srv.URL(), hosts(sc.agents), fleetTokensEnv+"="+file)
		defer f.stop(t)
		for have := 0; have < sc.agents; {
			add := min(registerWindow, sc.agents-have)
			f.do(t, fmt.Sprintf("add %d", add))
			have += add
		}
		h := herd(t, f, srv, 0)
		secs := func(d time.Duration) string { return fmt.Sprintf("%.2f s", d.Seconds()) }
		all := h.back[len(h.back)-1]
		s := tb.add(fmt.Sprintf("Restart at once with identity tokens: converge checking an OIDC token at every registration killed (SIGKILL) with %d agents connected, each with a token of its own, and started again", sc.agents),
			"herd", "", "")
		s.add(row{what: "agents back: half", a: secs(percentile(h.back, 50)), comp: "-"})
		s.add(row{what: "agents back: 99 %", a: secs(percentile(h.back, 99)), comp: "-"})
		s.add(row{what: fmt.Sprintf("agents back: all %d", h.agents), a: secs(all), comp: "-", target: "<= " + secs(maxRestartTime), verdict: verdict(all <= maxRestartTime)})
		s.add(row{what: "CPU per agent back: converge", a: fmt.Sprintf("%.0f µs", float64(h.serverCPU.Microseconds())/float64(h.agents)), comp: "-"})
		s.add(row{what: "agents that gave up", a: fmt.Sprintf("%d", h.gaveUp), comp: "-", target: "0", verdict: verdict(h.gaveUp == 0)})
	})
}

// TestBenchHerdTokens prints only the restart herd with identity tokens.
func TestBenchHerdTokens(t *testing.T) {
	if !*flagTable || *flagAgents <= 0 {
		t.Skip("the benchmark table runs with -bench-table and -bench-agents")
	}
	tb := &table{header: machine()}
	herdTokens(t, tb, scaleConfig{agents: *flagAgents})
	fmt.Print("\n" + tb.String())
}
