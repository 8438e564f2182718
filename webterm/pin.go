package webterm

import (
	"crypto/subtle"
	"encoding/base64"
	"fmt"
	"net"
	"strings"

	"golang.org/x/crypto/ssh"
)

// pinPrefix starts every fingerprint OpenSSH and the agent print.
const pinPrefix = "SHA256:"

// ParsePin checks a host key fingerprint as a user pins it in the page's
// URL (#fp=SHA256:…) and returns it in the form ssh.FingerprintSHA256
// prints. It forgives what copying a URL does to base64: spaces where '+'
// stood (form decoding) and '=' padding.
func ParsePin(s string) (string, error) {
	s = strings.TrimSpace(s)
	if !strings.HasPrefix(s, pinPrefix) {
		return "", fmt.Errorf("pinned host key %q does not start with %s: copy the fingerprint from the job log", s, pinPrefix)
	}
	b64 := strings.TrimRight(strings.ReplaceAll(s[len(pinPrefix):], " ", "+"), "=")
	raw, err := base64.RawStdEncoding.DecodeString(b64)
	if err != nil || len(raw) != 32 {
		return "", fmt.Errorf("pinned host key %q is not a SHA-256 fingerprint: copy it whole from the job log", s)
	}
	return pinPrefix + b64, nil
}

// HostKeyError is why Start refused the agent's host key. With no pin
// (Want empty) it carries the fingerprint for the user to compare with
// the job log before pinning it.
type HostKeyError struct {
	Want string // the pinned fingerprint, or "" when none was pinned
	Got  string // the agent's
}

func (e *HostKeyError) Error() string {
	if e.Want == "" {
		return fmt.Sprintf("the agent's host key is %s; compare it with the \"Host key:\" line of the job log before connecting", e.Got)
	}
	return fmt.Sprintf("host key mismatch: the link pins %s but the agent presented %s; "+
		"someone may be posing as the agent (or the link is for another job): do not log in", e.Want, e.Got)
}

// checkHostKey accepts only the host key whose fingerprint is pin; with
// no pin it accepts none and reports the key's fingerprint.
func checkHostKey(pin string) ssh.HostKeyCallback {
	return func(_ string, _ net.Addr, key ssh.PublicKey) error {
		got := ssh.FingerprintSHA256(key)
		if pin == "" || subtle.ConstantTimeCompare([]byte(got), []byte(pin)) != 1 {
			return &HostKeyError{Want: pin, Got: got}
		}
		return nil
	}
}
