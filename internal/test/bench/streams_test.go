package bench

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"math"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/converge-ci/converge/internal/leg"
	"github.com/converge-ci/converge/internal/resume"
	"github.com/converge-ci/converge/internal/wire"
	"github.com/converge-ci/converge/internal/wsconn"
	"github.com/converge-ci/converge/wsproxy"
)

// Many streams at once (issue 13): n clients each download size bytes
// from one agent through one converge process, all started together. The
// streams are wsproxy's own (resumable, over raw stream legs when the
// server takes them) to an agent that speaks the real control and stream
// protocols but serves bytes instead of SSH, so that one process can hold
// hundreds of them and the relay, not SSH, is what they share.

// fairTarget is the least Jain's fairness index of the streams'
// throughputs that counts as a fair share: 1 when all are equal, 1/n
// when one stream takes everything.
const fairTarget = 0.9

// streamSize is what each of the many streams downloads.
const streamSize = 16 << 20

// streamsResult is what a run of many streams measured.
type streamsResult struct {
	n        int
	size     int64
	speeds   []float64     // MiB/s of each stream that finished, sorted
	stalled  int           // streams that did not finish by the deadline
	wall     time.Duration // from the start until the last stream finished
	cpu      time.Duration // converge's CPU time from the start until all ended
	firstErr error
}

// jain is Jain's fairness index of xs: (Σx)² / (n·Σx²).
func jain(xs []float64) float64 {
	var sum, sq float64
	for _, x := range xs {
		sum += x
		sq += x * x
	}
	if sq == 0 {
		return 0
	}
	return sum * sum / (float64(len(xs)) * sq)
}

// runStreams starts a source agent on srv, opens n streams through it,
// waits until every one is open, then lets them all download size bytes
// at once. A stream that has not finished by deadline (after the start)
// has stalled. Streams are wsproxy's default (resumable, raw stream legs),
// or with plain set plain WebSocket streams, as other tools open.
func runStreams(t testing.TB, srv *serverProc, n int, size int64, deadline time.Duration, plain bool) streamsResult {
	t.Helper()
	id := fmt.Sprintf("streams-%d", n)
	if plain {
		id += "-plain"
	}
	start := make(chan struct{}) // closed when every stream is open
	stop := startSourceAgent(t, srv, id, size, start)
	defer stop()
	target, err := wsproxy.ParseTarget(srv.URL() + wire.ClientPath(id))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), deadline+time.Minute)
	defer cancel()
	var (
		wg     sync.WaitGroup
		opened sync.WaitGroup
		mu     sync.Mutex
		res    = streamsResult{n: n, size: size}
		began  time.Time
	)
	opened.Add(n)
	for range n {
		wg.Go(func() {
			conn, err := wsproxy.Dial(ctx, target, wsproxy.Options{NoResume: plain, Logger: slog.New(slog.DiscardHandler)})
			opened.Done()
			if err != nil {
				mu.Lock()
				res.stalled++
				res.firstErr = cmp(res.firstErr, fmt.Errorf("dial: %w", err))
				mu.Unlock()
				return
			}
			defer conn.Close()
			<-start
			stop := context.AfterFunc(ctx, func() { conn.SetReadDeadline(time.Now()) })
			defer stop()
			got, err := io.Copy(io.Discard, conn)
			done := time.Now()
			mu.Lock()
			defer mu.Unlock()
			if err != nil || got != size {
				res.stalled++
				res.firstErr = cmp(res.firstErr, fmt.Errorf("read %d of %d bytes: %v", got, size, err))
				return
			}
			res.speeds = append(res.speeds, float64(size)/(1<<20)/done.Sub(began).Seconds())
			res.wall = max(res.wall, done.Sub(began))
		})
	}
	opened.Wait()
	cpu0 := procCPU(srv.cmd.Process.Pid)
	mu.Lock()
	began = time.Now()
	mu.Unlock()
	close(start)
	stopAt := time.AfterFunc(deadline, cancel) // what is still reading then has stalled
	wg.Wait()
	stopAt.Stop()
	res.cpu = procCPU(srv.cmd.Process.Pid) - cpu0
	slices.Sort(res.speeds)
	return res
}

func cmp(first, err error) error {
	if first != nil {
		return first
	}
	return err
}

// startSourceAgent registers id with srv as an agent offering resumable
// streams and answers each dial request: it dials the stream back (a raw
// stream leg, or a WebSocket if the server does not switch), takes the
// resumable session, waits for start, writes size bytes and closes. stop
// ends it and waits for every goroutine it started.
func startSourceAgent(t testing.TB, srv *serverProc, id string, size int64, start <-chan struct{}) (stop func()) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	c, err := wsconn.Dial(ctx, srv.URL()+wire.AgentPath(id), wsconn.Options{Subprotocols: []string{wire.ControlProtocol}})
	if err != nil {
		cancel()
		t.Fatalf("source agent: %v", err)
	}
	c.SetReadLimit(wire.MaxMessageSize)
	send := func(m wire.Message) error {
		b, err := wire.Encode(m)
		if err != nil {
			return err
		}
		return c.Write(ctx, websocket.MessageText, b)
	}
	read := func() (wire.Message, error) {
		_, b, err := c.Read(ctx)
		if err != nil {
			return wire.Message{}, err
		}
		return wire.Decode(b)
	}
	if err := send(wire.Message{Type: wire.TypeHello, Hello: &wire.Hello{Version: "bench", Protocols: []string{resume.Protocol}}}); err != nil {
		t.Fatal(err)
	}
	if m, err := read(); err != nil || m.Type != wire.TypeWelcome {
		t.Fatalf("source agent: got %v, %v; want a welcome", m.Type, err)
	}
	acc, err := resume.NewAcceptor(resume.Config{MaxSessions: 4096, MaxUnconfirmed: 4096, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	payload := make([]byte, 256<<10)
	var wg sync.WaitGroup
	wg.Go(func() { wsconn.Keepalive(ctx, c, wsconn.PingInterval, wsconn.PingTimeout, nil) })
	wg.Go(func() {
		for {
			m, err := read()
			if err != nil {
				return
			}
			if m.Type != wire.TypeDial {
				continue
			}
			wg.Go(func() {
				url := srv.URL() + wire.StreamPath(id, m.Dial.Token)
				if m.Dial.Protocol != resume.Protocol {
					servePlain(ctx, url, payload, size, start)
					return
				}
				serveSource(ctx, url, acc, payload, size, start)
			})
		}
	})
	return func() {
		cancel()
		c.CloseNow()
		acc.Close()
		wg.Wait()
	}
}

// serveSource dials one stream back and writes size bytes into it.
func serveSource(ctx context.Context, url string, acc *resume.Acceptor, payload []byte, size int64, start <-chan struct{}) {
	dctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	c, err := leg.Dial(dctx, url, leg.DialOptions{Protocols: []string{wire.StreamProtocol}, Raw: true, Fallback: &leg.Fallback{}})
	if err != nil {
		return
	}
	conn, err := acc.Attach(resume.Link(c))
	if err != nil || conn == nil {
		return
	}
	conn.Confirm()
	defer conn.Close()
	send(ctx, conn, payload, size, start)
}

// servePlain dials one plain stream back as a WebSocket and writes size
// bytes into it.
func servePlain(ctx context.Context, url string, payload []byte, size int64, start <-chan struct{}) {
	dctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	ws, err := wsconn.Dial(dctx, url, wsconn.Options{Subprotocols: []string{wire.StreamProtocol}})
	cancel()
	if err != nil {
		return
	}
	conn := wsconn.NetConn(ctx, ws)
	defer conn.Close()
	send(ctx, conn, payload, size, start)
}

// send waits for start, then writes size bytes of payload to conn.
func send(ctx context.Context, conn io.Writer, payload []byte, size int64, start <-chan struct{}) {
	select {
	case <-start:
	case <-ctx.Done():
		return
	}
	for left := size; left > 0; {
		n, err := conn.Write(payload[:min(int64(len(payload)), left)])
		if err != nil {
			return
		}
		left -= int64(n)
	}
}

// addStreams adds the section of the many-streams rows.
func addStreams(tb *table, r streamsResult) {
	s := tb.add(fmt.Sprintf("Many streams: %d streams through one converge, each downloading %d MiB from one agent, all at once", r.n, r.size>>20),
		"value", "", "")
	done := len(r.speeds)
	s.add(row{what: "streams finished", a: fmt.Sprintf("%d of %d", done, r.n), comp: "-",
		target: "all (none stalls)", verdict: verdict(r.stalled == 0 && done == r.n)})
	if done == 0 {
		return
	}
	total := float64(done) * float64(r.size) / (1 << 20)
	s.add(row{what: "per-stream MiB/s: min / median / max", a: fmt.Sprintf("%.2f / %.2f / %.2f", r.speeds[0], r.speeds[done/2], r.speeds[done-1]), comp: "-"})
	j := jain(r.speeds)
	s.add(row{what: "Jain's fairness index of the throughputs", a: fmt.Sprintf("%.3f", j), comp: "-",
		target: fmt.Sprintf(">= %.1f", fairTarget), verdict: verdict(j >= fairTarget && !math.IsNaN(j))})
	s.add(row{what: "all streams together", a: fmt.Sprintf("%.1f MiB/s", total/r.wall.Seconds()), comp: "-"})
	s.add(row{what: "converge's CPU per MiB", a: fmt.Sprintf("%.2f ms", float64(r.cpu)/float64(time.Millisecond)/total), comp: "-"})
	tb.notes = append(tb.notes, "Many streams: in-process wsproxy clients (wsproxy.Dial, resumable, raw stream legs) and one agent that speaks the real control and stream protocols but writes bytes instead of running SSH, both in the harness process, so what the streams share is converge and this machine's two cores. A stream's throughput is its size over the time from the common start to its last byte; a stream that does not finish within the deadline has stalled. Jain's index is (Σx)²/(n·Σx²): 1 when every stream gets the same.")
}

// manyStreams runs n streams through a fresh converge and adds their rows.
func manyStreams(t *testing.T, tb *table, n int) {
	t.Logf("running %d streams at once", n)
	srv := startServer(t, "--max-streams-per-addr=-1")
	r := runStreams(t, srv, n, streamSize, 5*time.Minute, false)
	if r.firstErr != nil {
		t.Logf("many streams, first failure: %v", r.firstErr)
	}
	addStreams(tb, r)
}

// TestBenchStreams measures only the many-streams rows (go test -run
// TestBenchStreams -bench-table).
func TestBenchStreams(t *testing.T) {
	if !*flagTable {
		t.Skip("the benchmark rows run with -bench-table")
	}
	tb := &table{header: machine()}
	manyStreams(t, tb, *flagStreams)
	fmt.Print("\n" + tb.String())
}

// TestManyStreamsNoneStalls is the quick version that runs with every go
// test: 50 streams of 256 KiB through one server at once must all finish,
// with wsproxy's default streams (raw legs) and with plain WebSockets. It
// asserts completion within a generous deadline, never a speed.
func TestManyStreamsNoneStalls(t *testing.T) {
	srv := startServer(t, "--max-streams-per-addr=-1")
	for _, plain := range []bool{false, true} {
		r := runStreams(t, srv, 50, 256<<10, 2*time.Minute, plain)
		if r.stalled > 0 || len(r.speeds) != r.n {
			t.Fatalf("plain WebSockets %v: %d of %d streams stalled or failed (first: %v)", plain, r.stalled, r.n, r.firstErr)
		}
	}
}
