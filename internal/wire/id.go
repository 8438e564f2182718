package wire

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
)

// MaxIDLength bounds a rendezvous ID.
const MaxIDLength = 64

// ValidID reports whether id may be used as a rendezvous ID: 1 to 64
// characters from letters, digits, '.', '_' and '-', not starting with '.'.
// IDs appear in URLs, logs and shell commands, so nothing else is allowed.
func ValidID(id string) error {
	if id == "" {
		return fmt.Errorf("rendezvous ID is empty")
	}
	if len(id) > MaxIDLength {
		return fmt.Errorf("rendezvous ID is %d characters long, at most %d are allowed", len(id), MaxIDLength)
	}
	if id[0] == '.' {
		return fmt.Errorf("rendezvous ID %q must not start with '.'", id)
	}
	for i := 0; i < len(id); i++ {
		if !idChar(id[i]) {
			return fmt.Errorf("rendezvous ID %q has %q at position %d; use letters, digits, '.', '_' and '-'", id, id[i], i+1)
		}
	}
	return nil
}

func idChar(c byte) bool {
	return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '.' || c == '_' || c == '-'
}

// MaxUserLength bounds the SSH user name.
const MaxUserLength = 32

// ValidUser reports whether u may be the SSH user name clients log in
// with: 1 to 32 characters from letters, digits, '.', '_' and '-'. The
// server checks its configuration with it, and the agent the name the
// server's welcome carries: the agent prints that name in the job log, next
// to the host key users verify, so it must not carry anything else.
func ValidUser(u string) error {
	if u == "" {
		return fmt.Errorf("ssh user is empty")
	}
	if len(u) > MaxUserLength {
		return fmt.Errorf("ssh user is %d characters long, at most %d are allowed", len(u), MaxUserLength)
	}
	for i := 0; i < len(u); i++ {
		if !idChar(u[i]) {
			return fmt.Errorf("ssh user %q has %q at position %d; use letters, digits, '.', '_' and '-'", u, u[i], i+1)
		}
	}
	return nil
}

// TokenLength is the length of a token in hex digits (128 bits).
const TokenLength = 32

// NewToken returns a fresh random token: 32 lowercase hex digits.
func NewToken() string {
	var b [TokenLength / 2]byte
	rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// ValidToken reports whether s has the form NewToken returns.
func ValidToken(s string) error {
	if len(s) != TokenLength {
		return fmt.Errorf("token must be %d hex digits, has %d characters", TokenLength, len(s))
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= '0' && c <= '9' || c >= 'a' && c <= 'f') {
			return fmt.Errorf("token has non-hex character at position %d", i+1)
		}
	}
	return nil
}

// NewID returns a random rendezvous ID that is easy to read aloud and type.
func NewID() string {
	const alphabet = "abcdefghjkmnpqrstuvwxyz23456789"
	var b [12]byte
	rand.Read(b[:])
	for i := range b {
		b[i] = alphabet[int(b[i])%len(alphabet)]
	}
	return string(b[:4]) + "-" + string(b[4:8]) + "-" + string(b[8:])
}
