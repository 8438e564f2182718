package sshd

import (
	"net"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/converge-ci/converge/internal/test/sshtest"
	gossh "golang.org/x/crypto/ssh"
)

// serveDirect runs a Server on 127.0.0.1:0 with user name "u" until the
// test ends.
func serveDirect(t *testing.T, cfg Config) (*Server, string) {
	t.Helper()
	cfg.Dir = t.TempDir()
	cfg.Logger = quietLog()
	cfg.User = func() string { return "u" }
	d, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { d.Serve(ln); close(done) }()
	t.Cleanup(func() { d.Close(); <-done; d.Wait() })
	return d, ln.Addr().String()
}

// TestAuthAttemptsCapped: a client that offers many keys is disconnected
// once it has used up the per-connection budget, as sshd's MaxAuthTries.
func TestAuthAttemptsCapped(t *testing.T) {
	t.Parallel()
	_, line := sshtest.NewKey(t, "the one that would get in")
	a, addr := serveDirect(t, Config{AuthorizedKeys: line})
	var signers []gossh.Signer
	for range 3 * maxAuthTries {
		s, _ := sshtest.NewKey(t, "stranger")
		signers = append(signers, s)
	}
	_, err := gossh.Dial("tcp", addr, &gossh.ClientConfig{
		User:            "u",
		Auth:            []gossh.AuthMethod{gossh.PublicKeys(signers...)},
		HostKeyCallback: gossh.FixedHostKey(a.HostKey()),
	})
	if err == nil || !strings.Contains(err.Error(), "too many authentication failures") {
		t.Errorf("%d unknown keys: error %v, want a disconnect for too many authentication failures", len(signers), err)
	}
}

// TestFailedPasswordsDelayed: each wrong password costs the client at
// least failedPasswordDelay, and a connection gets at most maxAuthTries of
// them.
func TestFailedPasswordsDelayed(t *testing.T) {
	t.Parallel()
	a, addr := serveDirect(t, Config{Password: "correct horse"})
	var tries atomic.Int32
	guess := gossh.RetryableAuthMethod(gossh.PasswordCallback(func() (string, error) {
		tries.Add(1)
		return "wrong", nil
	}), 3*maxAuthTries)
	start := time.Now()
	_, err := gossh.Dial("tcp", addr, &gossh.ClientConfig{
		User:            "u",
		Auth:            []gossh.AuthMethod{guess},
		HostKeyCallback: gossh.FixedHostKey(a.HostKey()),
	})
	elapsed := time.Since(start)
	n := int(tries.Load())
	if err == nil || !strings.Contains(err.Error(), "too many authentication failures") {
		t.Errorf("%d wrong passwords: error %v, want a disconnect for too many authentication failures", n, err)
	}
	if n > maxAuthTries {
		t.Errorf("the connection had %d password tries, want at most %d", n, maxAuthTries)
	}
	if min := time.Duration(n) * failedPasswordDelay; elapsed < min {
		t.Errorf("%d wrong passwords took %v, want at least %v", n, elapsed, min)
	}
}
