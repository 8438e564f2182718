// Package faultproxy is a TCP proxy for tests that injects faults between
// two parts of Converge: it forwards every connection it accepts to a
// target address and, on command, cuts every connection, pauses all
// traffic, or switches to a new target (a restarted server on a new port).
//
// It listens on 127.0.0.1 only and is not meant for production use.
package faultproxy

import (
	"errors"
	"io"
	"net"
	"strings"
	"sync"
)

// Proxy forwards TCP connections to a target. Create it with New; Close
// stops it and waits for every goroutine it started.
type Proxy struct {
	ln net.Listener
	wg sync.WaitGroup

	mu      sync.Mutex
	target  string
	conns   map[net.Conn]struct{}
	paused  bool
	resumed chan struct{} // closed when a pause ends
	closed  bool
}

// New starts a proxy on 127.0.0.1:0 forwarding to target (host:port, or
// the path of a Unix socket).
func New(target string) (*Proxy, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	p := &Proxy{ln: ln, target: target, conns: make(map[net.Conn]struct{})}
	p.wg.Add(1)
	go p.accept()
	return p, nil
}

// Addr is the proxy's listening address, host:port.
func (p *Proxy) Addr() string { return p.ln.Addr().String() }

// Retarget sends new connections to target. Existing connections keep
// their backend until cut.
func (p *Proxy) Retarget(target string) {
	p.mu.Lock()
	p.target = target
	p.mu.Unlock()
}

// Cut closes every open connection, both sides, as a network failure
// would (the sockets are reset, not shut down cleanly). New connections
// are still accepted. It returns how many connections it cut.
func (p *Proxy) Cut() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	n := 0
	for c := range p.conns {
		if tc, ok := c.(*net.TCPConn); ok {
			tc.SetLinger(0) // RST instead of FIN
		}
		c.Close()
		n++
	}
	return n / 2
}

// Pause stops forwarding bytes on every connection (open or new) until
// Resume: a network that silently holds traffic, without any reset.
// Connections cut while paused are closed at once; their forwarding
// goroutines end at Resume or Close.
func (p *Proxy) Pause() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if !p.paused {
		p.paused = true
		p.resumed = make(chan struct{})
	}
}

// Resume ends a Pause.
func (p *Proxy) Resume() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.paused {
		p.paused = false
		close(p.resumed)
	}
}

// Close stops accepting, cuts every connection and waits for the
// forwarding goroutines.
func (p *Proxy) Close() error {
	p.mu.Lock()
	p.closed = true
	p.mu.Unlock()
	err := p.ln.Close()
	p.Resume()
	p.Cut()
	p.wg.Wait()
	return err
}

func (p *Proxy) accept() {
	defer p.wg.Done()
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return
		}
		p.wg.Add(1)
		go p.forward(c)
	}
}

// gate blocks while the proxy is paused. It reports false when the proxy
// closed meanwhile.
func (p *Proxy) gate() bool {
	p.mu.Lock()
	paused, resumed, closed := p.paused, p.resumed, p.closed
	p.mu.Unlock()
	if paused {
		<-resumed
	}
	return !closed
}

func (p *Proxy) forward(client net.Conn) {
	defer p.wg.Done()
	p.mu.Lock()
	target := p.target
	p.mu.Unlock()
	network := "tcp"
	if strings.HasPrefix(target, "/") {
		network = "unix"
	}
	backend, err := net.Dial(network, target)
	if err != nil {
		client.Close()
		return
	}
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		client.Close()
		backend.Close()
		return
	}
	p.conns[client] = struct{}{}
	p.conns[backend] = struct{}{}
	p.mu.Unlock()

	var wg sync.WaitGroup
	pump := func(dst, src net.Conn) {
		defer wg.Done()
		buf := make([]byte, 32<<10)
		for {
			n, err := src.Read(buf)
			if n > 0 {
				if !p.gate() {
					break
				}
				if _, werr := dst.Write(buf[:n]); werr != nil {
					break
				}
			}
			if err != nil {
				if errors.Is(err, io.EOF) {
					// Pass a clean end on as a clean end.
					if tc, ok := dst.(*net.TCPConn); ok {
						tc.CloseWrite()
						return
					}
				}
				break
			}
		}
		dst.Close()
		src.Close()
	}
	wg.Add(2)
	go pump(backend, client)
	go pump(client, backend)
	wg.Wait()
	client.Close()
	backend.Close()
	p.mu.Lock()
	delete(p.conns, client)
	delete(p.conns, backend)
	p.mu.Unlock()
}
