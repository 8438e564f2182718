package receipt

import (
	"bytes"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/rsa"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	gossh "golang.org/x/crypto/ssh"

	"github.com/converge-ci/converge/agent/journal"
)

// verify runs the stock ssh-keygen -Y verify on message and sig.
func verify(t *testing.T, dir, allowed string, message, sig []byte) error {
	t.Helper()
	af, sf := filepath.Join(dir, "allowed_signers"), filepath.Join(dir, "check.sig")
	if err := os.WriteFile(af, []byte(allowed+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(sf, sig, 0o600); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("ssh-keygen", "-Y", "verify", "-f", af, "-I", "converge-test", "-n", Namespace, "-s", sf)
	cmd.Stdin = bytes.NewReader(message)
	out, err := cmd.CombinedOutput()
	if err != nil {
		return &exec.ExitError{ProcessState: cmd.ProcessState, Stderr: out}
	}
	return nil
}

func signers(t *testing.T) map[string]gossh.Signer {
	_, ed, _ := ed25519.GenerateKey(rand.Reader)
	edS, err := gossh.NewSignerFromKey(ed)
	if err != nil {
		t.Fatal(err)
	}
	rk, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	rsaS, err := gossh.NewSignerFromKey(rk)
	if err != nil {
		t.Fatal(err)
	}
	return map[string]gossh.Signer{"ed25519": edS, "rsa": rsaS}
}

func TestSignVerifiesWithSSHKeygen(t *testing.T) {
	if _, err := exec.LookPath("ssh-keygen"); err != nil {
		t.Fatal("ssh-keygen is needed (openssh-client)")
	}
	for name, s := range signers(t) {
		t.Run(name, func(t *testing.T) {
			dir := t.TempDir()
			msg := []byte("{\"seq\":0}\n{\"seq\":1}\n")
			sig, err := Sign(s, Namespace, msg)
			if err != nil {
				t.Fatal(err)
			}
			allowed := AllowedSigners("converge-test", s.PublicKey())
			if err := verify(t, dir, allowed, msg, sig); err != nil {
				t.Fatalf("ssh-keygen -Y verify refused a good signature: %s", err.(*exec.ExitError).Stderr)
			}
			other, _ := Sign(s, "git", msg)
			if verify(t, dir, allowed, msg, other) == nil {
				t.Fatal("a signature for another namespace passed")
			}
		})
	}
}

// TestReceiptTamper: the receipt of a journal verifies; flipping any
// byte of it, or dropping any line, fails the check.
func TestReceiptTamper(t *testing.T) {
	s := signers(t)["ed25519"]
	j := journal.New(nil)
	j.Append(journal.Entry{Kind: journal.KindStart, Note: "id=test"})
	j.Append(journal.Entry{Kind: journal.KindLogin, Conn: "ab", Login: &journal.Login{User: "u", Method: "publickey", Comment: "alice"}})
	j.Append(journal.Entry{Kind: journal.KindSessionStart, Conn: "ab", Session: &journal.Session{ID: "s1", Kind: "shell"}})
	dir := t.TempDir()
	w, err := Start(Config{Dir: dir, Journal: j, Signer: s})
	if err != nil {
		t.Fatal(err)
	}
	j.Append(journal.Entry{Kind: journal.KindEnd, Note: "ended"})
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	body, _ := os.ReadFile(w.Path())
	sig, _ := os.ReadFile(w.SigPath())
	if n := bytes.Count(body, []byte("\n")); n != 4 {
		t.Fatalf("receipt has %d lines, want 4 (the end entry too):\n%s", n, body)
	}
	if _, err := journal.Read(bytes.NewReader(body)); err != nil {
		t.Fatalf("receipt's chain: %v", err)
	}
	allowed := AllowedSigners("converge-test", s.PublicKey())
	if err := verify(t, dir, allowed, body, sig); err != nil {
		t.Fatalf("receipt refused: %s", err.(*exec.ExitError).Stderr)
	}
	for i := range body {
		bad := bytes.Clone(body)
		bad[i] ^= 0x01
		if verify(t, dir, allowed, bad, sig) == nil {
			t.Fatalf("receipt with byte %d flipped passed", i)
		}
	}
	lines := strings.SplitAfter(string(body), "\n")
	for i := range lines[:len(lines)-1] {
		bad := strings.Join(append(append([]string{}, lines[:i]...), lines[i+1:]...), "")
		if verify(t, dir, allowed, []byte(bad), sig) == nil {
			t.Fatalf("receipt without line %d passed", i+1)
		}
	}
}
