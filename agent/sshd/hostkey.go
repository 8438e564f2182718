package sshd

import (
	"crypto/ed25519"
	"crypto/rand"
	"fmt"
	"os"

	gossh "golang.org/x/crypto/ssh"
)

// LoadHostKey returns a host key: the PEM in pemData, else the
// file at path, else a fresh ed25519 key for this run.
func LoadHostKey(path string, pemData []byte) (gossh.Signer, error) {
	source := "from the environment"
	if len(pemData) == 0 && path != "" {
		source = path
		b, err := os.ReadFile(path)
		if err != nil {
			return nil, fmt.Errorf("read host key: %w", err)
		}
		pemData = b
	}
	if len(pemData) > 0 {
		s, err := gossh.ParsePrivateKey(pemData)
		if err != nil {
			return nil, fmt.Errorf("parse host key %s: %w (give an unencrypted OpenSSH private key, e.g. from ssh-keygen -t ed25519 -N '')", source, err)
		}
		return s, nil
	}
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("generate host key: %w", err)
	}
	return gossh.NewSignerFromKey(priv)
}
