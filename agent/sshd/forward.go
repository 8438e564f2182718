package sshd

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"strconv"
	"sync"
	"time"

	"github.com/gliderlabs/ssh"
	gossh "golang.org/x/crypto/ssh"
)

// Port forwarding, as OpenSSH's sshd does it with its defaults:
//
//   - ssh -L (channel "direct-tcpip", or "direct-streamlocal@openssh.com"
//     for a Unix socket): the agent dials the address the client names,
//     from inside the job, and joins it to the channel.
//   - ssh -R (request "tcpip-forward"): the agent listens inside the job on
//     loopback only (sshd's GatewayPorts=no) and opens a "forwarded-tcpip"
//     channel back to the client for each connection. This listener exists
//     because the user asked for it; the agent never listens for its own
//     traffic.
//
// Both kinds end with the SSH connection that asked for them.

// forwardDialTimeout bounds dialling the target of an ssh -L connection.
const forwardDialTimeout = 10 * time.Second

// forwarder owns the goroutines of every forward, so the server can wait
// for them when it stops.
type forwarder struct {
	log   *slog.Logger
	watch Watcher
	// record records a forward in the journal (Server.recordForward).
	record func(ctx ssh.Context, kind, target string) (end func(in, out int64))
	wg     sync.WaitGroup
}

// directTCPIP serves one ssh -L connection.
func (f *forwarder) directTCPIP(_ *ssh.Server, _ *gossh.ServerConn, nc gossh.NewChannel, ctx ssh.Context) {
	var d struct {
		DestAddr   string
		DestPort   uint32
		OriginAddr string
		OriginPort uint32
	}
	if err := gossh.Unmarshal(nc.ExtraData(), &d); err != nil {
		nc.Reject(gossh.ConnectionFailed, "bad direct-tcpip request: "+err.Error())
		return
	}
	dest := net.JoinHostPort(d.DestAddr, strconv.FormatUint(uint64(d.DestPort), 10))
	f.dialAndJoin(ctx, nc, "tcp", dest)
}

// dialAndJoin dials addr from inside the job for an ssh -L channel, then
// accepts the channel and joins the two until both directions end. A
// target that cannot be reached rejects the channel with the reason.
func (f *forwarder) dialAndJoin(ctx ssh.Context, nc gossh.NewChannel, network, addr string) {
	log := f.log.With("user", ctx.User(), "forward", "local", "dest", addr)
	dctx, cancel := context.WithTimeout(ctx, forwardDialTimeout)
	var dialer net.Dialer
	c, err := dialer.DialContext(dctx, network, addr)
	cancel()
	if err != nil {
		log.Info("forward refused: cannot dial", "error", err)
		nc.Reject(gossh.ConnectionFailed, "agent cannot reach "+addr+": "+err.Error())
		return
	}
	ch, reqs, err := nc.Accept()
	if err != nil {
		c.Close()
		return
	}
	f.wg.Add(1)
	defer f.wg.Done()
	go gossh.DiscardRequests(reqs) // ends when the channel closes
	log.Debug("forward opened")
	end := f.record(ctx, "forward-local", addr)
	up, down := joinChannel(ctx, ch, c.(halfCloser))
	end(up, down)
	log.Debug("forward closed", "sent", up, "received", down)
}

// directStreamLocal serves one ssh -L whose target is a Unix socket in the
// job (ssh -L 2375:/var/run/docker.sock): OpenSSH's
// "direct-streamlocal@openssh.com" channel.
func (f *forwarder) directStreamLocal(_ *ssh.Server, _ *gossh.ServerConn, nc gossh.NewChannel, ctx ssh.Context) {
	var d struct {
		SocketPath string
		Reserved0  string
		Reserved1  uint32
	}
	if err := gossh.Unmarshal(nc.ExtraData(), &d); err != nil {
		nc.Reject(gossh.ConnectionFailed, "bad direct-streamlocal request: "+err.Error())
		return
	}
	f.dialAndJoin(ctx, nc, "unix", d.SocketPath)
}

// remoteForwards holds one SSH connection's ssh -R listeners, keyed by the
// address the client asked for (so cancel-tcpip-forward finds them).
type remoteForwards struct {
	mu  sync.Mutex
	lns map[string]net.Listener
}

type remoteForwardsKey struct{}

// tcpipForward handles "tcpip-forward" and "cancel-tcpip-forward" global
// requests. gliderlabs calls it from the connection's request loop, one
// request at a time.
func (f *forwarder) tcpipForward(ctx ssh.Context, _ *ssh.Server, req *gossh.Request) (bool, []byte) {
	var r struct {
		BindAddr string
		BindPort uint32
	}
	if err := gossh.Unmarshal(req.Payload, &r); err != nil || r.BindPort > 65535 {
		return false, nil
	}
	key := net.JoinHostPort(r.BindAddr, strconv.FormatUint(uint64(r.BindPort), 10))
	rf, _ := ctx.Value(remoteForwardsKey{}).(*remoteForwards)
	if rf == nil {
		rf = &remoteForwards{lns: make(map[string]net.Listener)}
		ctx.SetValue(remoteForwardsKey{}, rf)
		// The connection's end closes its listeners, which ends the accept
		// loops; their copies end with the connection's channels.
		context.AfterFunc(ctx, func() {
			rf.mu.Lock()
			defer rf.mu.Unlock()
			for k, ln := range rf.lns {
				ln.Close()
				delete(rf.lns, k)
			}
		})
	}
	log := f.log.With("user", ctx.User(), "forward", "remote", "bind", key)

	if req.Type == "cancel-tcpip-forward" {
		rf.mu.Lock()
		ln, ok := rf.lns[key]
		delete(rf.lns, key)
		rf.mu.Unlock()
		if ok {
			ln.Close()
			log.Info("remote forward cancelled")
		}
		return ok, nil
	}

	conn, ok := ctx.Value(ssh.ContextKeyConn).(*gossh.ServerConn)
	if !ok {
		return false, nil
	}
	ln, err := net.Listen("tcp", net.JoinHostPort(loopbackFor(r.BindAddr), strconv.FormatUint(uint64(r.BindPort), 10)))
	if err != nil {
		log.Info("remote forward refused", "error", err)
		return false, nil
	}
	port := ln.Addr().(*net.TCPAddr).Port
	rf.mu.Lock()
	if ctx.Err() != nil { // the connection ended meanwhile
		rf.mu.Unlock()
		ln.Close()
		return false, nil
	}
	rf.lns[key] = ln
	rf.mu.Unlock()
	log.Info("remote forward listening", "addr", ln.Addr().String())
	end := f.record(ctx, "forward-remote", ln.Addr().String())

	f.wg.Add(1)
	go func() {
		defer f.wg.Done()
		defer end(0, 0)
		f.acceptForwarded(ctx, conn, ln, r.BindAddr, uint32(port))
	}()
	if r.BindPort == 0 {
		return true, gossh.Marshal(struct{ Port uint32 }{uint32(port)})
	}
	return true, nil
}

// acceptForwarded joins each connection to ln to a new forwarded-tcpip
// channel on conn, until ln is closed.
func (f *forwarder) acceptForwarded(ctx context.Context, conn *gossh.ServerConn, ln net.Listener, bindAddr string, port uint32) {
	var wg sync.WaitGroup
	defer wg.Wait()
	for {
		c, err := ln.Accept()
		if err != nil {
			if !errors.Is(err, net.ErrClosed) {
				f.log.Warn("remote forward stopped", "addr", ln.Addr().String(), "error", err)
			}
			return
		}
		origin := c.RemoteAddr().(*net.TCPAddr)
		payload := gossh.Marshal(struct {
			DestAddr   string
			DestPort   uint32
			OriginAddr string
			OriginPort uint32
		}{bindAddr, port, origin.IP.String(), uint32(origin.Port)})
		wg.Add(1)
		go func() {
			defer wg.Done()
			ch, reqs, err := conn.OpenChannel("forwarded-tcpip", payload)
			if err != nil {
				c.Close()
				return
			}
			go gossh.DiscardRequests(reqs) // ends when the channel closes
			// What the user's side sends counts as activity, as on the
			// channels users open (Watcher.Hook).
			joinChannel(ctx, f.watch.WatchInput(ch), c.(*net.TCPConn))
		}()
	}
}

// loopbackFor maps the address a client asked to bind to a loopback one:
// like sshd's default GatewayPorts=no, forwards are reachable only from
// inside the job.
func loopbackFor(bind string) string {
	if ip := net.ParseIP(bind); ip != nil && ip.To4() == nil && ip.IsLoopback() {
		return "::1"
	}
	return "127.0.0.1"
}

// halfCloser is a TCP or Unix connection.
type halfCloser interface {
	net.Conn
	CloseWrite() error
}

// joinChannel copies between an SSH channel and a connection until both
// directions end, and returns the bytes copied each way. Unlike
// internal/splice it keeps half-closes: an EOF on one side becomes a
// CloseWrite on the other, because forwarded protocols rely on it (a client
// that shuts down its sending side still waits for the reply). An error in
// either direction, or the end of ctx (the SSH connection), closes both
// sides at once.
func joinChannel(ctx context.Context, ch gossh.Channel, c halfCloser) (toConn, toChannel int64) {
	var wg sync.WaitGroup
	var once sync.Once
	closeBoth := func() { once.Do(func() { ch.Close(); c.Close() }) }
	stop := context.AfterFunc(ctx, closeBoth)
	defer stop()
	wg.Add(2)
	go func() {
		defer wg.Done()
		n, err := io.Copy(c, ch)
		toConn = n
		if err != nil {
			closeBoth()
			return
		}
		c.CloseWrite()
	}()
	go func() {
		defer wg.Done()
		n, err := io.Copy(ch, c)
		toChannel = n
		if err != nil {
			closeBoth()
			return
		}
		ch.CloseWrite()
	}()
	wg.Wait()
	closeBoth()
	return toConn, toChannel
}
