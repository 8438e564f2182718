// Package sshtest drives the real OpenSSH client programs (ssh, sftp, scp,
// ssh-keygen) in tests: a temporary HOME, a fresh key, host keys verified
// through known_hosts (checking is never disabled), and the -v transcript
// printed when a command fails.
//
// A missing OpenSSH binary fails the test: the suite is meant to run them.
package sshtest

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	gossh "golang.org/x/crypto/ssh"
)

// Client is one user with a home directory, a key pair and known hosts.
type Client struct {
	t          testing.TB
	Home       string
	KeyFile    string // private key
	PublicKey  string // authorized_keys line
	KnownHosts string
}

// Target says how to reach an agent.
type Target struct {
	User string
	// Alias names the host key in known_hosts (ssh -o HostKeyAlias).
	Alias string
	// ProxyCommand, when set, is used with host "localhost"; else Port.
	ProxyCommand string
	Port         int
}

// New makes a client with a fresh ed25519 key.
func New(t testing.TB) *Client {
	t.Helper()
	for _, b := range []string{"ssh", "sftp", "scp", "ssh-keygen"} {
		if _, err := exec.LookPath(b); err != nil {
			t.Fatalf("OpenSSH program %s not found: install openssh-client (the suite needs the real clients)", b)
		}
	}
	home := t.TempDir()
	c := &Client{t: t, Home: home, KeyFile: filepath.Join(home, "id_ed25519"), KnownHosts: filepath.Join(home, "known_hosts")}
	out, err := exec.Command("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "sshtest", "-f", c.KeyFile).CombinedOutput()
	if err != nil {
		t.Fatalf("ssh-keygen: %v\n%s", err, out)
	}
	pub, err := os.ReadFile(c.KeyFile + ".pub")
	if err != nil {
		t.Fatal(err)
	}
	c.PublicKey = strings.TrimSpace(string(pub))
	if err := os.WriteFile(c.KnownHosts, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	return c
}

// Trust adds key to known_hosts under alias.
func (c *Client) Trust(alias string, key gossh.PublicKey) {
	c.t.Helper()
	line := alias + " " + string(gossh.MarshalAuthorizedKey(key))
	f, err := os.OpenFile(c.KnownHosts, os.O_APPEND|os.O_WRONLY, 0o600)
	if err != nil {
		c.t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.WriteString(line); err != nil {
		c.t.Fatal(err)
	}
}

// Options returns the -o options common to ssh, sftp and scp for tgt.
func (c *Client) Options(tgt Target) []string {
	opts := []string{
		"-F", "none",
		"-i", c.KeyFile,
		"-o", "IdentitiesOnly=yes",
		"-o", "IdentityAgent=none",
		"-o", "BatchMode=yes",
		"-o", "StrictHostKeyChecking=yes",
		"-o", "UserKnownHostsFile=" + c.KnownHosts,
		"-o", "GlobalKnownHostsFile=/dev/null",
		"-o", "ConnectTimeout=20",
		"-o", "ServerAliveInterval=10",
		"-o", "LogLevel=ERROR",
	}
	if tgt.Alias != "" {
		opts = append(opts, "-o", "HostKeyAlias="+tgt.Alias)
	}
	if tgt.ProxyCommand != "" {
		opts = append(opts, "-o", "ProxyCommand="+tgt.ProxyCommand)
	} else {
		opts = append(opts, "-o", "Port="+strconv.Itoa(tgt.Port))
	}
	return opts
}

// Dest is user@localhost for tgt.
func (tgt Target) Dest() string { return tgt.User + "@localhost" }

// Command returns prog (ssh, sftp or scp) with the options for tgt, then
// args, running with the client's HOME. The caller adds the destination
// where prog wants it (use tgt.Dest()).
func (c *Client) Command(ctx context.Context, prog string, tgt Target, args ...string) *exec.Cmd {
	cmd := exec.CommandContext(ctx, prog, append(c.Options(tgt), args...)...)
	cmd.Env = append(os.Environ(), "HOME="+c.Home)
	cmd.WaitDelay = 5 * time.Second
	return cmd
}

// Result of a finished command.
type Result struct {
	Stdout, Stderr string
	Code           int
}

// Run runs prog with the options for tgt and args, feeding stdin, and
// returns its output and exit code. It fails the test only when the
// program could not run at all.
func (c *Client) Run(prog string, tgt Target, stdin string, args ...string) Result {
	c.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := c.Command(ctx, prog, tgt, args...)
	var out, errb bytes.Buffer
	cmd.Stdin = strings.NewReader(stdin)
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	code := 0
	if errors.Is(err, exec.ErrWaitDelay) {
		// ssh exited 0, but its ProxyCommand still holds ssh's stderr:
		// wsproxy may linger a few seconds to tell the agent that a
		// resumable stream ended. ssh's own output is complete.
		err = nil
	}
	if err != nil {
		ee, ok := err.(*exec.ExitError)
		if !ok {
			c.t.Fatalf("%s: %v", prog, err)
		}
		code = ee.ExitCode()
	}
	return Result{Stdout: out.String(), Stderr: errb.String(), Code: code}
}

// SSH runs a remote command and fails the test, with a -v transcript,
// unless it exits with want.
func (c *Client) SSH(tgt Target, want int, command string) Result {
	c.t.Helper()
	r := c.Run("ssh", tgt, "", tgt.Dest(), command)
	if r.Code != want {
		c.t.Errorf("ssh %q: exit %d, want %d\nstdout: %s\nstderr: %s", command, r.Code, want, r.Stdout, r.Stderr)
		c.Transcript(tgt, command)
	}
	return r
}

// Transcript logs the verbose output of running command again, to show
// why it failed.
func (c *Client) Transcript(tgt Target, command string) {
	c.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	args := append([]string{"-v"}, tgt.Dest(), command)
	cmd := c.Command(ctx, "ssh", tgt, args...)
	for i, a := range cmd.Args {
		if a == "LogLevel=ERROR" {
			cmd.Args[i] = "LogLevel=DEBUG1"
		}
	}
	out, _ := cmd.CombinedOutput()
	c.t.Logf("ssh -v transcript of %q:\n%s", command, out)
}

// Fingerprint returns the SHA256 fingerprint ssh-keygen reports for the
// known_hosts entry of alias, as OpenSSH recorded it.
func (c *Client) Fingerprint(alias string) string {
	c.t.Helper()
	out, err := exec.Command("ssh-keygen", "-l", "-F", alias, "-f", c.KnownHosts).CombinedOutput()
	if err != nil {
		c.t.Fatalf("ssh-keygen -F %s: %v\n%s", alias, err, out)
	}
	for _, f := range strings.Fields(string(out)) {
		if strings.HasPrefix(f, "SHA256:") {
			return f
		}
	}
	c.t.Fatalf("no fingerprint for %s in:\n%s", alias, out)
	return ""
}

// NewKey returns a fresh ed25519 key pair as a signer, and its
// authorized_keys line ending in comment, for tests of Go SSH code.
func NewKey(t testing.TB, comment string) (gossh.Signer, string) {
	t.Helper()
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	s, err := gossh.NewSignerFromKey(priv)
	if err != nil {
		t.Fatal(err)
	}
	return s, strings.TrimSpace(string(gossh.MarshalAuthorizedKey(s.PublicKey()))) + " " + comment
}
