// Package agenttest runs a real agent inside a test's process: it starts
// the agent, waits on its registration signal (agent.Config.OnRegistered)
// rather than on its printed instructions, and stops it when the test
// ends. It is for tests only; tests of the agent binary read its output,
// which is the contract users see.
package agenttest

import (
	"context"
	"testing"
	"time"

	"github.com/converge-ci/converge/agent"
)

// registerTimeout is how long Start waits for the first registration.
const registerTimeout = 20 * time.Second

// Agent is an agent running until the test ends.
type Agent struct {
	*agent.Agent
	done chan struct{}
	err  error // Run's result, once done is closed
}

// Start creates an agent from cfg, runs it, and returns once the server
// has welcomed it. A callback already in cfg.OnRegistered is still
// called. Start fails the test if New fails, if Run returns before the
// agent registered, or if that takes longer than registerTimeout. When
// the test ends, a cleanup cancels Run, waits for it and reports an error
// it returned.
func Start(t testing.TB, cfg agent.Config) *Agent {
	t.Helper()
	registered := make(chan struct{}, 1)
	next := cfg.OnRegistered
	cfg.OnRegistered = func() {
		if next != nil {
			next()
		}
		select {
		case registered <- struct{}{}:
		default:
		}
	}
	a, err := agent.New(cfg)
	if err != nil {
		t.Fatalf("agent: %v", err)
	}
	r := &Agent{Agent: a, done: make(chan struct{})}
	ctx, cancel := context.WithCancel(context.Background())
	go func() {
		defer close(r.done)
		r.err = a.Run(ctx)
	}()
	t.Cleanup(func() {
		cancel()
		if err := r.Wait(); err != nil {
			t.Errorf("agent %s: %v", cfg.ID, err)
		}
	})
	timeout := time.NewTimer(registerTimeout)
	defer timeout.Stop()
	select {
	case <-registered:
	case <-r.done:
		t.Fatalf("agent %s ended before it registered: %v", cfg.ID, r.err)
	case <-timeout.C:
		t.Fatalf("agent %s did not register within %v", cfg.ID, registerTimeout)
	}
	return r
}

// Wait waits for Run to return and returns its result.
func (r *Agent) Wait() error {
	<-r.done
	return r.err
}
