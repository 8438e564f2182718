package bench

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/converge-ci/converge/agent"
	"github.com/converge-ci/converge/internal/test/sshtest"
	"github.com/converge-ci/converge/internal/wire"
	"github.com/converge-ci/converge/internal/wsconn"
)

// startIdleAgents runs n real agents against srv and waits until all are
// registered. stop ends them and waits for them.
func startIdleAgents(t *testing.T, srv *serverProc, n int, c *sshtest.Client) (stop func()) {
	t.Helper()
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, ".authorized_keys"), []byte(c.PublicKey+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	failed := make(chan error, n)
	stop = func() {
		cancel()
		wg.Wait()
		select {
		case err := <-failed:
			t.Errorf("an idle agent failed: %v", err)
		default:
		}
	}
	// Batches, so that the server sees a steady arrival rather than n
	// handshakes at once.
	const batch = 100
	for i := 0; i < n; i += batch {
		registered := make(chan struct{}, batch)
		started := 0
		for j := i; j < min(n, i+batch); j++ {
			var once sync.Once
			a, err := agent.New(agent.Config{
				Server: srv.URL(), ID: fmt.Sprintf("idle-%04d", j), Dir: dir, Out: io.Discard,
				Logger:       slog.New(slog.DiscardHandler),
				OnRegistered: func() { once.Do(func() { registered <- struct{}{} }) },
			})
			if err != nil {
				stop()
				t.Fatal(err)
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				if err := a.Run(ctx); err != nil {
					failed <- err
				}
			}()
			started++
		}
		timeout := time.After(60 * time.Second)
		for range started {
			select {
			case <-registered:
			case err := <-failed:
				stop()
				t.Fatalf("an idle agent failed: %v\n%s", err, srv.log.tail())
			case <-timeout:
				stop()
				t.Fatalf("agents %d..%d did not all register within 60s\n%s", i, i+started-1, srv.log.tail())
			}
		}
	}
	return stop
}

// fillPools connects a client to each of the n agents startIdleAgents
// started on srv and leaves at once, so that each keeps an idle stream for
// its next client, and waits until the server holds all n of them.
func fillPools(t *testing.T, srv *serverProc, n int) {
	t.Helper()
	const batch = 4
	for i := 0; i < n; i += batch {
		var wg sync.WaitGroup
		for j := i; j < min(n, i+batch); j++ {
			wg.Go(func() {
				ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
				defer cancel()
				c, err := wsconn.Dial(ctx, srv.URL()+wire.ClientPath(fmt.Sprintf("idle-%04d", j)), wsconn.Options{})
				if err != nil {
					t.Errorf("client of agent %d: %v", j, err)
					return
				}
				c.CloseNow()
			})
		}
		wg.Wait()
	}
	deadline := time.Now().Add(60 * time.Second)
	for {
		got, err := serverMetric(srv, "converge_pooled_streams_idle")
		if err == nil && int(got) == n {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("idle pooled streams: %v (%v), want %d\n%s", got, err, n, srv.log.tail())
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// serverMetric reads the value of an unlabelled series from srv's /metrics.
func serverMetric(srv *serverProc, name string) (float64, error) {
	resp, err := http.Get("http://" + srv.Addr + "/metrics")
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return 0, err
	}
	for line := range strings.Lines(string(b)) {
		if v, ok := strings.CutPrefix(line, name+" "); ok {
			return strconv.ParseFloat(strings.TrimSpace(v), 64)
		}
	}
	return 0, fmt.Errorf("no %s in /metrics", name)
}
