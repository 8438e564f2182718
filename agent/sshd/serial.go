package sshd

import (
	"io"
	"sync"

	"github.com/gliderlabs/ssh"
)

// serialSession makes a session safe for writers on several goroutines:
// the process's output copy and the lifetime's notices (warnings, the
// closing message) both write to it. x/crypto's channel reuses one packet
// buffer per stream for every Write, so two concurrent Writes to stdout
// (or to stderr) race on it and can corrupt what the user sees; a mutex
// per stream orders them, each Write whole.
type serialSession struct {
	ssh.Session
	out, errOut sync.Mutex
}

func (s *serialSession) Write(p []byte) (int, error) {
	s.out.Lock()
	defer s.out.Unlock()
	return s.Session.Write(p)
}

func (s *serialSession) Stderr() io.ReadWriter {
	return serialStderr{s.Session.Stderr(), &s.errOut}
}

type serialStderr struct {
	io.ReadWriter
	mu *sync.Mutex
}

func (s serialStderr) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.ReadWriter.Write(p)
}
