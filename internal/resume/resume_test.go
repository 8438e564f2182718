package resume

import (
	"bytes"
	"context"
	crand "crypto/rand"
	"errors"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"sync"
	"testing"
	"time"
)

func testConfig() Config {
	return Config{Window: time.Minute, Buffer: MinBuffer, Logger: slog.New(slog.DiscardHandler)}
}

// faultLink closes itself once budget bytes have crossed it either way,
// cutting a frame in the middle if that is where the budget ends.
type faultLink struct {
	net.Conn
	mu     sync.Mutex
	budget int
}

func (f *faultLink) take(n int) (int, bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.budget < 0 {
		return n, true // unlimited
	}
	if n >= f.budget {
		n = f.budget
		f.budget = 0
		return n, false
	}
	f.budget -= n
	return n, true
}

func (f *faultLink) Write(p []byte) (int, error) {
	n, ok := f.take(len(p))
	w, err := f.Conn.Write(p[:n])
	if !ok {
		f.Conn.Close()
		return w, net.ErrClosed
	}
	return w, err
}

func (f *faultLink) Read(p []byte) (int, error) {
	n, err := f.Conn.Read(p)
	k, ok := f.take(n)
	if !ok {
		f.Conn.Close()
		if k == 0 {
			return 0, net.ErrClosed
		}
		return k, nil // the rest of what arrived is lost with the link
	}
	return n, err
}

// world connects client ends to an Acceptor over in-memory pipes. budgets
// lists the byte budget of each link in turn (-1: unlimited); links past
// the list are unlimited. down makes redial fail. New sessions are
// confirmed on the server end unless unconfirmed is set.
type world struct {
	t   *testing.T
	acc *Acceptor

	mu          sync.Mutex
	budgets     []int
	links       int
	down        bool
	unconfirmed bool
	current     *faultLink
	wg          sync.WaitGroup
	accepted    chan *Conn
}

func newWorld(t *testing.T, cfg Config, budgets ...int) *world {
	acc, err := NewAcceptor(cfg)
	if err != nil {
		t.Fatal(err)
	}
	w := &world{t: t, acc: acc, budgets: budgets, accepted: make(chan *Conn, 16)}
	t.Cleanup(func() { acc.Close(); w.wg.Wait() })
	return w
}

// link makes a new pipe whose server end is attached to the acceptor.
func (w *world) link(ctx context.Context) (io.ReadWriteCloser, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.down {
		return nil, errors.New("server down")
	}
	budget := -1
	if w.links < len(w.budgets) {
		budget = w.budgets[w.links]
	}
	w.links++
	a, b := net.Pipe()
	fl := &faultLink{Conn: a, budget: budget}
	w.current = fl
	w.wg.Add(1)
	go func() {
		defer w.wg.Done()
		c, err := w.acc.Attach(b)
		if c != nil {
			// As the agent does once SSH has logged the user in; here
			// before any byte after the hellos crosses, so that links the
			// tests cut are resumed.
			if !w.unconfirmed {
				c.Confirm()
			}
			w.accepted <- c
		}
		_ = err
	}()
	return fl, nil
}

// cut breaks the current link.
func (w *world) cut() {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.current != nil {
		w.current.Conn.Close()
	}
}

func (w *world) setDown(down bool) {
	w.mu.Lock()
	w.down = down
	w.mu.Unlock()
}

// dial starts a client session and returns both ends.
func (w *world) dial(cfg Config) (client, server *Conn) {
	w.t.Helper()
	l, _ := w.link(context.Background())
	c, err := Dial(l, w.link, cfg)
	if err != nil {
		w.t.Fatalf("Dial: %v", err)
	}
	// The client end's goroutine is the Conn's own; end it before the
	// acceptor (cleanups run last-registered first).
	w.t.Cleanup(func() { c.Abort(); <-c.Done() })
	return c, <-w.accepted
}

func randomBytes(n int, seed uint64) []byte {
	r := rand.New(rand.NewPCG(seed, seed))
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(r.Uint32())
	}
	return b
}

// exchange sends a→b and b→a at once in odd-sized writes, reads what each
// expects, checks the bytes, then closes both ends and waits for both
// sessions to finish cleanly.
func exchange(t *testing.T, a, b *Conn, ab, ba []byte) {
	t.Helper()
	var wg sync.WaitGroup
	send := func(c *Conn, data []byte) {
		defer wg.Done()
		for len(data) > 0 {
			n := min(len(data), 1+rand.IntN(100<<10))
			if _, err := c.Write(data[:n]); err != nil {
				t.Errorf("write: %v", err)
				return
			}
			data = data[n:]
		}
	}
	recv := func(c *Conn, want []byte) {
		defer wg.Done()
		got := make([]byte, len(want))
		if n, err := io.ReadFull(c, got); err != nil {
			t.Errorf("read: %v after %d of %d bytes", err, n, len(want))
			return
		}
		if !bytes.Equal(got, want) {
			t.Errorf("got %d bytes differing from those sent at offset %d", len(got), firstDiff(got, want))
		}
	}
	wg.Add(4)
	go send(a, ab)
	go send(b, ba)
	go recv(b, ab)
	go recv(a, ba)
	wg.Wait()
	a.Close()
	b.Close()
	<-a.Done()
	<-b.Done()
	if a.Err() != nil || b.Err() != nil {
		t.Errorf("sessions ended with %v and %v; want clean finishes", a.Err(), b.Err())
	}
}

func firstDiff(a, b []byte) int {
	for i := range min(len(a), len(b)) {
		if a[i] != b[i] {
			return i
		}
	}
	return min(len(a), len(b))
}

// knock plays someone who can reach the server end but cannot log in: it
// starts a new session, reads the answer (a hello, or a refusal) and,
// unless keep is set, drops the link. It returns the server end of the
// session (nil if refused), which is served as the SSH server serves a
// stream that never logs in: read until it fails, then closed.
func (w *world) knock(keep bool) *Conn {
	w.t.Helper()
	a, b := net.Pipe()
	got := make(chan *Conn, 1)
	w.wg.Add(1)
	go func() {
		defer w.wg.Done()
		c, _ := w.acc.Attach(b)
		got <- c
		if c != nil {
			io.Copy(io.Discard, c)
			c.Close()
		}
	}()
	var token [TokenLen]byte
	crand.Read(token[:])
	if _, err := a.Write(appendFrame(nil, frame{typ: frameHello, flags: flagNew, token: token, window: MinBuffer})); err != nil {
		w.t.Fatalf("knock: send hello: %v", err)
	}
	if _, err := newFrameReader(a).read(); err != nil {
		w.t.Fatalf("knock: read answer: %v", err)
	}
	if keep {
		w.wg.Add(1)
		go func() { defer w.wg.Done(); io.Copy(io.Discard, a) }()
		w.t.Cleanup(func() { a.Close() })
	} else {
		a.Close()
	}
	return <-got
}
