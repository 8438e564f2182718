package wire

import (
	"crypto/ed25519"
	"testing"

	gossh "golang.org/x/crypto/ssh"
)

// TestFingerprintAsOpenSSH: Fingerprint, which the server computes
// without an SSH library, is what ssh-keygen -l and x/crypto print.
func TestFingerprintAsOpenSSH(t *testing.T) {
	pub, _, _ := ed25519.GenerateKey(nil)
	k, err := gossh.NewPublicKey(pub)
	if err != nil {
		t.Fatal(err)
	}
	if got, want := Fingerprint(pub), gossh.FingerprintSHA256(k); got != want {
		t.Fatalf("Fingerprint = %q, want %q", got, want)
	}
}
