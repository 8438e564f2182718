package agent

import (
	"errors"
	"io"
	"log/slog"
	"net"
	"sync/atomic"
	"testing"

	"github.com/converge-ci/converge/internal/test/sshtest"
	gossh "golang.org/x/crypto/ssh"
)

// confirmCounter is a stream that counts Confirm calls, as a
// *resume.Conn would act on them.
type confirmCounter struct {
	net.Conn
	n atomic.Int32
}

func (c *confirmCounter) Confirm() { c.n.Add(1) }

// publicOnly offers a public key (public keys are public) without the
// private key: the server accepts the offer, the signature never comes.
type publicOnly struct{ gossh.Signer }

func (publicOnly) Sign(io.Reader, []byte) (*gossh.Signature, error) {
	return nil, errors.New("no private key")
}

func quietLog() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

// tcpPair returns both ends of a loopback TCP connection. (Not net.Pipe:
// both SSH ends write their version first, which a synchronous pipe
// deadlocks.)
func tcpPair(t *testing.T) (net.Conn, net.Conn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	client, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	server, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { client.Close(); server.Close() })
	return client, server
}

// TestConfirmOnlyAfterLogin: a resumable stream is confirmed once, after
// the login succeeds; never for keys merely offered (the public-key
// callback runs for each, and accepts an authorized key before any
// signature: the CVE-2024-45337 trap), a wrong user, or a failed login.
func TestConfirmOnlyAfterLogin(t *testing.T) {
	good, goodLine := sshtest.NewKey(t, "good")
	bad, _ := sshtest.NewKey(t, "bad")
	a, err := New(Config{Server: "ws://127.0.0.1:1", Dir: t.TempDir(), AuthorizedKeys: goodLine, Logger: quietLog()})
	if err != nil {
		t.Fatal(err)
	}
	a.SetSSHUser("ci")
	served := make(chan error, 1)
	go func() { served <- a.ssh.Serve(a.ln) }()
	t.Cleanup(func() { a.ln.Close(); a.ssh.Close(); <-served })

	for _, tc := range []struct {
		name  string
		user  string
		keys  []gossh.Signer
		login bool
	}{
		{"bad key then good key", "ci", []gossh.Signer{bad, good}, true},
		{"bad key only", "ci", []gossh.Signer{bad}, false},
		{"good public key, no signature", "ci", []gossh.Signer{publicOnly{good}}, false},
		{"good key, wrong user", "root", []gossh.Signer{good}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			client, server := tcpPair(t)
			stream := &confirmCounter{Conn: server}
			if !a.ln.deliver(stream) {
				t.Fatal("listener closed")
			}
			cfg := &gossh.ClientConfig{
				User:            tc.user,
				Auth:            []gossh.AuthMethod{gossh.PublicKeys(tc.keys...)},
				HostKeyCallback: gossh.FixedHostKey(a.HostKey()),
			}
			conn, chans, reqs, err := gossh.NewClientConn(client, "agent", cfg)
			if (err == nil) != tc.login {
				t.Fatalf("login: %v, want success %v", err, tc.login)
			}
			if err == nil {
				gossh.NewClient(conn, chans, reqs).Close()
			}
			client.Close()
			if n := stream.n.Load(); n != map[bool]int32{true: 1, false: 0}[tc.login] {
				t.Errorf("Confirm called %d times, want %d", n, map[bool]int32{true: 1, false: 0}[tc.login])
			}
		})
	}
}
