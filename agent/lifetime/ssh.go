package lifetime

import (
	"maps"
	"strings"
	"sync"
	"time"

	"github.com/gliderlabs/ssh"
	gossh "golang.org/x/crypto/ssh"
)

// Hook connects the lifetime to srv: a successful authentication counts
// as a login until the connection closes, and every byte a user sends on
// any channel (keystrokes, stdin, SFTP requests, forwarded data) counts as
// input, except on the connections watchOnly reports (observers, who may
// only watch: what they type never reaches a shell, so it does not keep
// the job up; their login and logout still count). watchOnly may be nil.
// Call it after the server's handlers are set, before it serves; it wraps
// them (srv.ChannelHandlers, or gliderlabs' defaults when nil, and
// srv.ServerConfigCallback).
func (l *Lifetime) Hook(srv *ssh.Server, watchOnly func(ssh.Context) bool) {
	base := srv.ServerConfigCallback
	srv.ServerConfigCallback = func(ctx ssh.Context) *gossh.ServerConfig {
		cfg := &gossh.ServerConfig{}
		if base != nil {
			cfg = base(ctx)
		}
		prev := cfg.AuthLogCallback
		var once sync.Once
		// x/crypto calls this after every authentication attempt; a nil
		// error means the user is in (partial success is an error).
		cfg.AuthLogCallback = func(c gossh.ConnMetadata, method string, err error) {
			if prev != nil {
				prev(c, method, err)
			}
			if err == nil {
				once.Do(func() { l.login(ctx) })
			}
		}
		return cfg
	}
	handlers := maps.Clone(srv.ChannelHandlers)
	if handlers == nil {
		handlers = maps.Clone(ssh.DefaultChannelHandlers)
	}
	for name, h := range handlers {
		handlers[name] = func(srv *ssh.Server, conn *gossh.ServerConn, nc gossh.NewChannel, ctx ssh.Context) {
			if watchOnly != nil && watchOnly(ctx) {
				h(srv, conn, nc, ctx)
				return
			}
			h(srv, conn, activeNewChannel{NewChannel: nc, l: l}, ctx)
		}
	}
	srv.ChannelHandlers = handlers
}

// activeNewChannel accepts channels whose reads count as user input.
type activeNewChannel struct {
	gossh.NewChannel
	l *Lifetime
}

func (c activeNewChannel) Accept() (gossh.Channel, <-chan *gossh.Request, error) {
	ch, reqs, err := c.NewChannel.Accept()
	if err != nil {
		return ch, reqs, err
	}
	return activeChannel{Channel: ch, l: c.l}, reqs, nil
}

// WatchInput returns ch with every read from it counted as user input,
// for channels the agent opens towards the user itself (remote port
// forwards), which Hook does not see. Closing it closes ch.
func (l *Lifetime) WatchInput(ch gossh.Channel) gossh.Channel {
	return activeChannel{Channel: ch, l: l}
}

type activeChannel struct {
	gossh.Channel
	l *Lifetime
}

func (c activeChannel) Read(p []byte) (int, error) {
	n, err := c.Channel.Read(p)
	if n > 0 {
		c.l.activity()
	}
	return n, err
}

// Keep counts a kept shell (one the SSH server keeps running when its
// client goes) until release is called: while one runs, the last logout
// does not end the agent, but the idle expiry (the last input from a
// user plus Expiry), .hold and MaxSession still do. A shell nobody is
// attached to gets no input, so it never keeps the job up past the
// expiry.
func (l *Lifetime) Keep() (release func()) {
	l.mu.Lock()
	l.st.kept++
	l.mu.Unlock()
	l.poke()
	var once sync.Once
	return func() {
		once.Do(func() {
			l.mu.Lock()
			l.st.kept--
			l.mu.Unlock()
			l.poke()
		})
	}
}

// liveSession is an open shell or command the lifetime may talk to.
type liveSession struct {
	l   *Lifetime
	s   ssh.Session
	pty bool

	mu   sync.Mutex
	busy bool          // a write is in flight
	said chan struct{} // closed when the last write started has finished
}

// Attach registers s for warnings and the closing message, and prints the
// banner into interactive login shells (a terminal and no command: not
// into the output of ssh -t host cmd). Call the returned detach when the
// session handler ends; Run.Exit waits for that. Once the lifetime has
// begun to end, Attach does nothing and detach is a no-op.
func (l *Lifetime) Attach(s ssh.Session) (detach func()) {
	_, _, pty := s.Pty()
	ls := &liveSession{l: l, s: s, pty: pty}
	l.mu.Lock()
	if l.closing {
		l.mu.Unlock()
		return func() {}
	}
	l.sessions[ls] = struct{}{}
	l.handlers.Add(1)
	var banner string
	if pty && s.RawCommand() == "" && s.Subsystem() == "" { // a login shell, not ssh -t host cmd
		banner = l.bannerLocked(time.Now())
	}
	l.mu.Unlock()
	if banner != "" {
		ls.write(banner)
	}
	return func() {
		l.mu.Lock()
		delete(l.sessions, ls)
		l.mu.Unlock()
		l.handlers.Done()
	}
}

// say writes text into the session without blocking the caller: a user
// whose client does not read must not stall the lifetime. A warning is
// skipped while an earlier write is still in flight. final ends the
// session once the text is written.
func (s *liveSession) say(text string, final bool) {
	s.mu.Lock()
	if s.busy && !final {
		s.mu.Unlock()
		return
	}
	s.busy = true
	done := make(chan struct{})
	prev := s.said
	s.said = done
	s.l.handlers.Add(1)
	s.mu.Unlock()
	go func() {
		defer s.l.handlers.Done()
		defer close(done)
		if prev != nil {
			<-prev // keep messages in order
		}
		s.write(text)
		if final {
			// End the session at the SSH level, so that the client hangs
			// up by itself rather than see its connection cut (which a
			// resumable stream would try to resume). A shell ends
			// cleanly; a command did not finish: 128+SIGHUP, which it
			// gets once the client is gone.
			code := 0
			if !s.pty {
				code = 128 + 1
			}
			s.s.Exit(code)
		}
		s.mu.Lock()
		if s.said == done {
			s.busy = false
		}
		s.mu.Unlock()
	}()
}

// waitSaid waits until the writes started so far have finished.
func (s *liveSession) waitSaid() {
	s.mu.Lock()
	done := s.said
	s.mu.Unlock()
	if done != nil {
		<-done
	}
}

// write puts text on the user's terminal (past the PTY, so it shows even
// while a program runs) or, for commands, on stderr.
func (s *liveSession) write(text string) {
	text = strings.TrimRight(text, "\n")
	if s.pty {
		lines := strings.Split(text, "\n")
		s.s.Write([]byte("\r\n" + strings.Join(lines, "\r\n") + "\r\n"))
		return
	}
	s.s.Stderr().Write([]byte(text + "\n"))
}
