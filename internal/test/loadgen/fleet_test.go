package loadgen_test

import (
	"context"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"runtime"
	"slices"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/converge-ci/converge/internal/test/loadgen"
	"github.com/converge-ci/converge/internal/test/testlog"
	"github.com/converge-ci/converge/internal/wire"
	"github.com/converge-ci/converge/internal/wsconn"
	"github.com/converge-ci/converge/server"
)

// TestFleetReturnsAfterServerRestart: 500 agents register, the server
// restarts on the same address with an empty registry, and every agent
// comes back under its own ID, none giving up, each
// reachable by a client. How fast is the benchmark's business (make
// bench), not this test's.
func TestFleetReturnsAfterServerRestart(t *testing.T) {
	const n = 500
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	cfg := server.Config{Logger: slog.New(slog.NewTextHandler(testlog.Writer(t), &slog.HandlerOptions{Level: slog.LevelWarn})), DrainTimeout: 5 * time.Second}
	var locals []netip.Addr
	if runtime.GOOS == "linux" {
		// Ten hosts of 50 agents each, within the default per-address limit.
		for i := range 10 {
			locals = append(locals, netip.AddrFrom4([4]byte{127, 0, 0, byte(2 + i)}))
		}
	} else {
		cfg.MaxAgentsPerAddr = -1 // only 127.0.0.1 is sure to be there
	}
	stop := serve(t, ln, cfg)

	f, err := loadgen.Start(loadgen.Config{Server: "ws://" + addr, LocalAddrs: locals})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(f.Stop)
	if err := f.Add(n); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if _, err := f.Wait(ctx, func(s loadgen.Stats) bool { return s.Connected == n }); err != nil {
		t.Fatal(err)
	}
	echo(t, addr, f.ID(7))

	f.Mark()
	stop() // drains: every agent is told to go away and comes back
	ln, err = net.Listen("tcp", addr)
	if err != nil {
		t.Fatalf("listen again on %s: %v", addr, err)
	}
	serve(t, ln, cfg)
	s, err := f.Wait(ctx, func(s loadgen.Stats) bool { return s.Back == n && s.Connected == n })
	if err != nil {
		t.Fatal(err)
	}
	if s.GaveUp != 0 {
		t.Errorf("after the restart %d agents gave up; want none (last error: %s)", s.GaveUp, s.LastError)
	}
	echo(t, addr, f.ID(n-1))
	var back []time.Duration
	for _, r := range f.Back() {
		if r.Dialled > r.Welcomed {
			t.Errorf("an agent was welcomed %v after the mark by an attempt started later, %v after it", r.Welcomed, r.Dialled)
		}
		back = append(back, r.Welcomed)
	}
	slices.Sort(back)
	t.Logf("%d agents back after the restart: half within %v, all within %v; %d attempts, %d failed (last: %s)",
		len(back), back[len(back)/2].Round(time.Millisecond), back[len(back)-1].Round(time.Millisecond), s.Attempts, s.Failures, s.LastError)
}

// serve runs a server for cfg on ln until stop, which waits for its drain
// (and runs at cleanup if the test did not call it).
func serve(t *testing.T, ln net.Listener, cfg server.Config) (stop func()) {
	t.Helper()
	cfg.Listener = ln
	srv, err := server.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Run(ctx) }()
	stopped := false
	stop = func() {
		if stopped {
			return
		}
		stopped = true
		cancel()
		if err := <-done; err != nil {
			t.Errorf("server: %v", err)
		}
	}
	t.Cleanup(stop)
	return stop
}

// echo checks that a client reaches agent id through the server at addr:
// what it writes comes back.
func echo(t *testing.T, addr, id string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	c, err := wsconn.Dial(ctx, "ws://"+addr+wire.ClientPath(id), wsconn.Options{})
	if err != nil {
		t.Fatalf("client to %s: %v", id, err)
	}
	nc := websocket.NetConn(ctx, c, websocket.MessageBinary)
	defer nc.Close()
	want := "hello " + id
	if _, err := io.WriteString(nc, want); err != nil {
		t.Fatalf("client to %s: write: %v", id, err)
	}
	got := make([]byte, len(want))
	if _, err := io.ReadFull(nc, got); err != nil || string(got) != want {
		t.Fatalf("client to %s: read %q, %v; want %q back", id, got, err, want)
	}
}
