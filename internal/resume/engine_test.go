package resume

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"strings"
	"testing"
	"testing/synctest"
	"time"
)

func TestTransfer(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		w := newWorld(t, testConfig())
		c, s := w.dial(testConfig())
		exchange(t, c, s, randomBytes(3<<20, 1), randomBytes(5<<20, 2))
		synctest.Wait()
		if n := w.acc.Len(); n != 0 {
			t.Errorf("acceptor holds %d sessions after both ends finished, want 0", n)
		}
	})
}

// TestDropsAtEveryPhase cuts links after a chosen number of bytes: inside
// the hellos, inside a frame header, inside a payload, around
// acknowledgements and the end of the stream, several times in a row.
// Every byte must arrive exactly once.
func TestDropsAtEveryPhase(t *testing.T) {
	const first = 300 << 10 // the first link carries some data, then dies
	hellos := 2 * (headerLen + helloLen)
	cases := [][]int{
		{first, 0},                            // the second link dies before its hello
		{first, 10},                           // inside the client's hello
		{first, headerLen + helloLen + 3},     // inside the server's hello
		{first, hellos + 2},                   // inside the first frame header after the hellos
		{first, hellos + headerLen + 8 + 100}, // inside the first payload
		{200 << 10, 1, 50, 70 << 10, 3 << 20},
		{1 << 20, 1 << 20, 1 << 20, 1 << 20},
		{(64 << 10) + 100, 5, 9, 13, (64 << 10) + 17},
	}
	for i, budgets := range cases {
		t.Run(fmt.Sprint(budgets), func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				w := newWorld(t, testConfig(), budgets...)
				c, s := w.dial(testConfig())
				exchange(t, c, s, randomBytes(3<<20, uint64(i)), randomBytes(2<<20, uint64(i+100)))
				if w.links < 2 {
					t.Errorf("only %d links were used; the case did not drop anything", w.links)
				}
			})
		})
	}
}

// TestDropsWhileClosing cuts the link right as the ends close, so the ends
// of stream and their acknowledgements are replayed.
func TestDropsWhileClosing(t *testing.T) {
	for _, budget := range []int{0, 5, 13, 26} {
		t.Run(fmt.Sprint(budget), func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				w := newWorld(t, testConfig())
				c, s := w.dial(testConfig())
				data := randomBytes(100<<10, 7)
				if _, err := s.Write(data); err != nil {
					t.Fatal(err)
				}
				got := make([]byte, len(data))
				if _, err := io.ReadFull(c, got); err != nil || !bytes.Equal(got, data) {
					t.Fatalf("read: %v", err)
				}
				synctest.Wait()
				// The next link lives for budget bytes after the hellos.
				w.mu.Lock()
				w.budgets = []int{-1, 2*(headerLen+helloLen) + budget}
				w.links = 1
				w.mu.Unlock()
				w.cut()
				s.Close()
				if b, err := io.ReadAll(c); err != nil || len(b) != 0 {
					t.Errorf("client read %q, %v after the server closed; want EOF", b, err)
				}
				c.Close()
				<-c.Done()
				<-s.Done()
				if c.Err() != nil || s.Err() != nil {
					t.Errorf("sessions ended with %v and %v; want clean finishes", c.Err(), s.Err())
				}
			})
		})
	}
}

// TestDialFailsOnBrokenLink: a link that dies during the first hello fails
// Dial; there is no session to resume yet.
func TestDialFailsOnBrokenLink(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		w := newWorld(t, testConfig(), 1)
		l, _ := w.link(t.Context())
		if c, err := Dial(l, w.link, testConfig()); err == nil {
			c.Abort()
			t.Fatal("Dial over a link cut inside the hello succeeded")
		}
	})
}

func TestEOFAfterPeerClose(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		w := newWorld(t, testConfig())
		c, s := w.dial(testConfig())
		data := randomBytes(300<<10, 3)
		s.Write(data)
		s.Close()
		got, err := io.ReadAll(c)
		if err != nil || !bytes.Equal(got, data) {
			t.Fatalf("ReadAll: %d bytes, %v; want %d bytes then EOF", len(got), err, len(data))
		}
		if _, err := c.Write([]byte("x")); err == nil {
			t.Error("Write after the peer closed succeeded")
		}
		c.Close()
		<-s.Done()
		<-c.Done()
		if _, err := s.Read(make([]byte, 1)); !errors.Is(err, net.ErrClosed) {
			t.Errorf("Read after Close: %v, want net.ErrClosed", err)
		}
	})
}

// TestBackpressure: a reader that stops reading makes the writer block
// once the window is full, for as long as it takes; full is not dead.
func TestBackpressure(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		cfg := testConfig()
		w := newWorld(t, cfg)
		c, s := w.dial(cfg)
		data := randomBytes(3*cfg.Buffer, 9)
		written := make(chan int, 1)
		go func() {
			n, _ := c.Write(data)
			written <- n
		}()
		time.Sleep(10 * cfg.Window) // nobody reads for ten windows
		synctest.Wait()
		select {
		case n := <-written:
			t.Fatalf("Write returned %d with nobody reading; want it blocked", n)
		default:
		}
		c.mu.Lock()
		buffered := c.out.len()
		c.mu.Unlock()
		s.mu.Lock()
		unread := s.in.len()
		s.mu.Unlock()
		if buffered != cfg.Buffer || unread != cfg.Buffer {
			t.Errorf("sender buffers %d and receiver %d bytes, want both at the %d-byte limit", buffered, unread, cfg.Buffer)
		}
		if s.over() || c.over() {
			t.Fatal("a session ended while merely full")
		}
		got := make([]byte, len(data))
		if _, err := io.ReadFull(s, got); err != nil || !bytes.Equal(got, data) {
			t.Fatalf("ReadFull: %v", err)
		}
		if n := <-written; n != len(data) {
			t.Errorf("Write wrote %d, want %d", n, len(data))
		}
	})
}

// TestExpiry: a client that does not come back within the window ends the
// session on both ends, not before.
func TestExpiry(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		cfg := testConfig()
		w := newWorld(t, cfg)
		c, s := w.dial(cfg)
		w.setDown(true)
		w.cut()
		time.Sleep(cfg.Window - time.Second)
		synctest.Wait()
		if c.over() || s.over() {
			t.Fatalf("a session ended before the window: client %v, server %v", c.err, s.err)
		}
		time.Sleep(2 * time.Second)
		synctest.Wait()
		for name, conn := range map[string]*Conn{"client": c, "server": s} {
			if _, err := conn.Read(make([]byte, 1)); !errors.Is(err, ErrExpired) {
				t.Errorf("%s Read after the window: %v, want ErrExpired", name, err)
			}
		}
		if n := w.acc.Len(); n != 0 {
			t.Errorf("acceptor holds %d sessions after expiry", n)
		}
	})
}

// TestComesBackWithinWindow: the link is down for most of the window.
func TestComesBackWithinWindow(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		cfg := testConfig()
		w := newWorld(t, cfg)
		c, s := w.dial(cfg)
		w.setDown(true)
		w.cut()
		go func() {
			time.Sleep(cfg.Window - 5*time.Second)
			w.setDown(false)
		}()
		exchange(t, c, s, randomBytes(1<<20, 4), randomBytes(1<<20, 5))
	})
}

// TestUnknownSession: after the server end restarts, a returning client
// is told its session is gone and stops retrying.
func TestUnknownSession(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		cfg := testConfig()
		w := newWorld(t, cfg)
		c, _ := w.dial(cfg)
		fresh, err := NewAcceptor(cfg)
		if err != nil {
			t.Fatal(err)
		}
		defer fresh.Close()
		w.mu.Lock()
		w.acc = fresh
		w.mu.Unlock()
		w.cut()
		<-c.Done()
		if err := c.Err(); !errors.Is(err, ErrPeerGone) {
			t.Errorf("Err = %v, want ErrPeerGone", err)
		}
	})
}

func TestDeadlines(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		w := newWorld(t, testConfig())
		c, s := w.dial(testConfig())
		c.SetReadDeadline(time.Now().Add(time.Second))
		if _, err := c.Read(make([]byte, 1)); !errors.Is(err, os.ErrDeadlineExceeded) {
			t.Errorf("Read past deadline: %v, want os.ErrDeadlineExceeded", err)
		}
		c.SetReadDeadline(time.Time{})
		s.Write([]byte("ok"))
		b := make([]byte, 2)
		if _, err := io.ReadFull(c, b); err != nil || string(b) != "ok" {
			t.Errorf("Read after clearing the deadline: %q, %v", b, err)
		}
		s.SetWriteDeadline(time.Now().Add(time.Second))
		if _, err := s.Write(make([]byte, 3*MinBuffer)); !errors.Is(err, os.ErrDeadlineExceeded) {
			t.Errorf("Write into a full window past deadline: %v, want os.ErrDeadlineExceeded", err)
		}
		// A deadline set while a Read waits ends that Read; setting the
		// same one again (an SSH server does, before every read and
		// write) changes nothing.
		c.Abort()
		s.Abort()
		c, s = w.dial(testConfig())
		errs := make(chan error, 1)
		go func() { _, err := c.Read(make([]byte, 1)); errs <- err }()
		synctest.Wait()
		c.SetDeadline(time.Time{})
		c.SetReadDeadline(time.Now().Add(time.Second))
		if err := <-errs; !errors.Is(err, os.ErrDeadlineExceeded) {
			t.Errorf("Read waiting when its deadline was set: %v, want os.ErrDeadlineExceeded", err)
		}
		c.Abort()
		s.Abort()
	})
}

// TestAcceptorShutdown: a shutting-down server end delivers what its
// sessions hold to connected clients, and does not wait past its timeout
// for clients that are away.
func TestAcceptorShutdown(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		cfg := testConfig()
		w := newWorld(t, cfg)
		present, s1 := w.dial(cfg)
		away, _ := w.dial(cfg)
		last := randomBytes(200<<10, 11)
		s1.Write(last)
		// The second client's link goes down and stays down.
		w.setDown(true)
		w.cut()
		synctest.Wait()

		start := time.Now()
		w.acc.Shutdown(5 * time.Second)
		if d := time.Since(start); d != 5*time.Second {
			t.Errorf("Shutdown took %v; want it to wait its 5s for the absent client, no more", d)
		}
		got, err := io.ReadAll(present)
		if err != nil || !bytes.Equal(got, last) {
			t.Errorf("connected client read %d bytes, %v; want the %d bytes written before shutdown, then EOF", len(got), err, len(last))
		}
		_ = away
	})
}

// TestMaxSessions: an acceptor at its limit refuses new sessions, with a
// reason, and keeps serving the ones it has.
func TestMaxSessions(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		cfg := testConfig()
		cfg.MaxSessions = 2
		w := newWorld(t, cfg)
		c1, s1 := w.dial(cfg)
		w.dial(cfg)
		l, _ := w.link(t.Context())
		if c, err := Dial(l, w.link, cfg); err == nil || !strings.Contains(err.Error(), "2 sessions") {
			if c != nil {
				c.Abort()
			}
			t.Fatalf("third session: %v; want a refusal naming the limit", err)
		}
		exchange(t, c1, s1, []byte("still"), []byte("served"))
	})
}

// TestLingerIsBounded: Close lingers until the peer has read the end of
// the stream, but not beyond the window when the peer never reads.
func TestLingerIsBounded(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		cfg := testConfig()
		w := newWorld(t, cfg)
		c, s := w.dial(cfg)
		c.Write([]byte("unread"))
		c.Close()
		time.Sleep(cfg.Window - time.Second)
		synctest.Wait()
		select {
		case <-c.Done():
			t.Fatalf("linger ended before the window: %v", c.Err())
		default:
		}
		time.Sleep(2 * time.Second)
		<-c.Done()
		if err := c.Err(); !errors.Is(err, ErrExpired) {
			t.Errorf("Err = %v, want ErrExpired", err)
		}
		s.Abort()
	})
}

// TestRandomDrops: many sessions, each with links that die after a random
// number of bytes (from inside a hello to a few hundred KiB), in both
// directions at once.
func TestRandomDrops(t *testing.T) {
	for seed := range uint64(20) {
		r := rand.New(rand.NewPCG(seed, 42))
		var budgets []int
		for range 6 {
			if r.IntN(3) == 0 {
				budgets = append(budgets, r.IntN(2*(headerLen+helloLen)+40)) // around the hellos
			} else {
				budgets = append(budgets, 2*(headerLen+helloLen)+r.IntN(400<<10))
			}
		}
		budgets[0] += 2*(headerLen+helloLen) + 1 // the first link must carry the hellos
		t.Run(fmt.Sprint(seed), func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				w := newWorld(t, testConfig(), budgets...)
				c, s := w.dial(testConfig())
				exchange(t, c, s, randomBytes(1<<20, seed), randomBytes(700<<10, seed+1000))
			})
		})
	}
}

// TestKnocksDoNotLockOut (issue 10, finding 2): someone who knows an ID
// but cannot log in starts more new sessions than the acceptor holds and
// drops each link at once. Sessions whose stream never authenticated must
// not hold a slot for the window: a real user still gets a session, and
// it still resumes after a drop.
func TestKnocksDoNotLockOut(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		cfg := testConfig()
		w := newWorld(t, cfg)
		for range 300 { // more than the default MaxSessions (256)
			w.knock(false)
		}
		c, s := w.dial(cfg)
		w.cut()
		exchange(t, c, s, randomBytes(300<<10, 21), randomBytes(200<<10, 22))
	})
}

// TestUnconfirmedEndsWithLink: a session nobody confirmed ends on both
// ends as soon as its link drops; the window is only for confirmed ones.
func TestUnconfirmedEndsWithLink(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		cfg := testConfig()
		w := newWorld(t, cfg)
		w.unconfirmed = true
		c, s := w.dial(cfg)
		w.cut()
		synctest.Wait() // no time passes
		if !s.over() || !c.over() {
			t.Fatal("an unconfirmed session outlived its link")
		}
		if err := s.Err(); !errors.Is(err, ErrUnconfirmed) {
			t.Errorf("server end: %v, want ErrUnconfirmed", err)
		}
		if err := c.Err(); !errors.Is(err, ErrPeerGone) {
			t.Errorf("client end: %v, want ErrPeerGone (no such session)", err)
		}
		if n := w.acc.Len(); n != 0 {
			t.Errorf("acceptor holds %d sessions, want 0", n)
		}
	})
}

// TestUnconfirmedEndsWhenItsClientReturns: a client that comes back for
// an unconfirmed session before the server end has seen its link drop
// (the link here is still open) ends the session as the drop would: its
// new link is refused with "no such session", not swapped in. Whichever
// side sees a cut first, the outcome is the same (see
// TestUnconfirmedEndsWithLink).
func TestUnconfirmedEndsWhenItsClientReturns(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		cfg := testConfig()
		w := newWorld(t, cfg)
		w.unconfirmed = true
		c, s := w.dial(cfg)
		a, b := net.Pipe()
		defer a.Close()
		refused := make(chan error, 1)
		go func() { _, err := w.acc.Attach(b); refused <- err }()
		if _, err := a.Write(appendFrame(nil, frame{typ: frameHello, token: c.token, window: MinBuffer})); err != nil {
			t.Fatal(err)
		}
		f, err := newFrameReader(a).read()
		if err != nil || f.typ != frameError || !strings.Contains(string(f.data), "no such session") {
			t.Fatalf("answer to the returning client: %q %q, %v; want no such session", f.typ, f.data, err)
		}
		if err := <-refused; err == nil {
			t.Error("Attach took the returning client's link")
		}
		<-s.Done()
		if err := s.Err(); !errors.Is(err, ErrUnconfirmed) {
			t.Errorf("server end: %v, want ErrUnconfirmed", err)
		}
		if n := w.acc.Len(); n != 0 {
			t.Errorf("acceptor holds %d sessions, want 0", n)
		}
	})
}

// TestUnconfirmedCap: links held open by someone who cannot log in take
// at most MaxUnconfirmed slots. A new session ends the oldest unconfirmed
// one instead of being refused, and confirmed sessions are never ended
// to make room.
func TestUnconfirmedCap(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		cfg := testConfig()
		cfg.MaxSessions, cfg.MaxUnconfirmed = 3, 4
		w := newWorld(t, cfg)
		var idle []*Conn
		for range cfg.MaxUnconfirmed {
			idle = append(idle, w.knock(true))
		}
		c, s := w.dial(cfg) // a real user, confirmed at once
		<-idle[0].Done()
		if err := idle[0].Err(); !errors.Is(err, ErrUnconfirmed) {
			t.Errorf("oldest idle session ended with %v, want ErrUnconfirmed", err)
		}
		for i := range 3 * cfg.MaxUnconfirmed {
			if k := w.knock(true); k == nil {
				t.Fatalf("knock %d refused; want the oldest unconfirmed session ended instead", i)
			}
		}
		if n, most := w.acc.Len(), cfg.MaxSessions+cfg.MaxUnconfirmed; n > most {
			t.Errorf("acceptor holds %d sessions, want at most %d", n, most)
		}
		w.cut() // the confirmed session still resumes
		exchange(t, c, s, randomBytes(100<<10, 31), randomBytes(100<<10, 32))
	})
}

// TestUnconfirmedLingerIsShort: an unconfirmed session closed by the
// server end (a failed login) whose peer never reads the end of the stream
// lingers the handshake timeout, not the window.
func TestUnconfirmedLingerIsShort(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		cfg := testConfig()
		w := newWorld(t, cfg)
		w.unconfirmed = true
		_, s := w.dial(cfg)
		s.Close()
		time.Sleep(10*time.Second + time.Second) // the default HandshakeTimeout, and a bit
		synctest.Wait()
		if !s.over() {
			t.Fatalf("an unconfirmed closed session still lingers after the handshake timeout (window %v)", cfg.Window)
		}
		if err := s.Err(); !errors.Is(err, ErrExpired) {
			t.Errorf("Err = %v, want ErrExpired", err)
		}
	})
}
