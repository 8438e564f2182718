package bench

import (
	"net"
	"sync"
	"testing"
	"time"
)

// delayProxy forwards each TCP connection it accepts to target, holding
// every chunk of bytes for a fixed one-way delay in each direction, so a
// path through it gains twice that as round trip.
//
// It delays without throttling: each direction is a queue of timestamped
// chunks; a reader appends what arrives as soon as it arrives, and a
// writer sends each chunk once its time has come. Bandwidth is then what
// the endpoints manage, and only the bytes in flight (bandwidth × delay)
// wait in memory, as on a long network path. Unlike netem it needs no
// privileges and runs wherever the tests run.
//
// A new connection costs a round trip before its first byte moves, as a
// TCP handshake does on a real path: the proxy accepts at once (the
// kernel does), but connects to the target and starts relaying only a
// round trip later, so the dialler's first bytes arrive after one and a
// half round trips and the target's after one.
type delayProxy struct {
	ln     net.Listener
	target string
	delay  time.Duration

	wg    sync.WaitGroup
	mu    sync.Mutex
	conns map[net.Conn]struct{}
	done  bool
}

// startDelayProxy listens on 127.0.0.1:0 until the test ends.
func startDelayProxy(t testing.TB, target string, oneWay time.Duration) *delayProxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &delayProxy{ln: ln, target: target, delay: oneWay, conns: make(map[net.Conn]struct{})}
	p.wg.Add(1)
	go p.serve()
	t.Cleanup(p.close)
	return p
}

// Addr is where to connect instead of the target.
func (p *delayProxy) Addr() string { return p.ln.Addr().String() }

func (p *delayProxy) close() {
	p.ln.Close()
	p.mu.Lock()
	p.done = true
	for c := range p.conns {
		c.Close()
	}
	p.mu.Unlock()
	p.wg.Wait()
}

func (p *delayProxy) track(c net.Conn) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.done {
		c.Close()
		return false
	}
	p.conns[c] = struct{}{}
	return true
}

func (p *delayProxy) untrack(c net.Conn) {
	p.mu.Lock()
	delete(p.conns, c)
	p.mu.Unlock()
	c.Close()
}

func (p *delayProxy) serve() {
	defer p.wg.Done()
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return
		}
		if !p.track(c) {
			return
		}
		p.wg.Add(1)
		go func() {
			defer p.wg.Done()
			defer p.untrack(c)
			time.Sleep(2 * p.delay) // the handshake's round trip (simulated, not a synchronisation)
			u, err := net.Dial("tcp", p.target)
			if err != nil {
				return
			}
			if !p.track(u) {
				return
			}
			defer p.untrack(u)
			var wg sync.WaitGroup
			wg.Add(2)
			go func() { defer wg.Done(); p.pipe(u.(*net.TCPConn), c.(*net.TCPConn)) }()
			go func() { defer wg.Done(); p.pipe(c.(*net.TCPConn), u.(*net.TCPConn)) }()
			wg.Wait()
		}()
	}
}

type chunk struct {
	buf *[]byte
	n   int
	due time.Time
}

const chunkSize = 64 << 10

var chunks = sync.Pool{New: func() any { b := make([]byte, chunkSize); return &b }}

// pipe copies src to dst, each chunk delayed. At the end of src it
// half-closes dst once everything queued has been written.
func (p *delayProxy) pipe(dst, src *net.TCPConn) {
	// 4096 queued chunks: far more than a delay of tens of milliseconds
	// ever holds at loopback speeds, so the queue never limits bandwidth;
	// it only bounds memory if the writer stalls.
	q := make(chan chunk, 4096)
	written := make(chan struct{})
	go func() {
		defer close(written)
		failed := false
		for ch := range q {
			if !failed {
				if d := time.Until(ch.due); d > 0 {
					time.Sleep(d)
				}
				if _, err := dst.Write((*ch.buf)[:ch.n]); err != nil {
					failed = true
					src.Close() // stop the reader; keep draining the queue
				}
			}
			chunks.Put(ch.buf)
		}
		if !failed {
			dst.CloseWrite()
		}
	}()
	for {
		b := chunks.Get().(*[]byte)
		n, err := src.Read(*b)
		if n > 0 {
			q <- chunk{buf: b, n: n, due: time.Now().Add(p.delay)}
		} else {
			chunks.Put(b)
		}
		if err != nil {
			break
		}
	}
	close(q)
	<-written
}
