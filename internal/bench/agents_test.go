package bench

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/converge-ci/converge/agent"
	"github.com/converge-ci/converge/internal/sshtest"
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
