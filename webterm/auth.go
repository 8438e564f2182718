package webterm

import (
	"crypto/x509"
	"errors"
	"fmt"
	"slices"
	"strings"

	"golang.org/x/crypto/ssh"
)

// Login is how Start logs in, in this order: each of Signers (the
// browser's own key, then a key file the user picked), then Password when
// it is set and the agent allows passwords.
type Login struct {
	// User is the SSH user name, the server's --ssh-user. Required.
	User string
	// Signers are offered in order. Nil: no key.
	Signers []ssh.Signer
	// Password is tried when the agent offers password logins. "": none.
	Password string
}

// AuthError is why Start could not log in: the agent accepted nothing it
// was offered. It says what the agent allows, so the page can tell the
// user what to do next.
type AuthError struct {
	Allowed       []string // methods the agent offers: "publickey", "password"
	Keys          int      // keys offered
	TriedPassword bool     // a password was offered
}

// PasswordAllowed reports whether the agent takes passwords.
func (e *AuthError) PasswordAllowed() bool { return slices.Contains(e.Allowed, "password") }

func (e *AuthError) Error() string {
	var tried []string
	if e.Keys > 0 {
		tried = append(tried, fmt.Sprintf("%d key(s)", e.Keys))
	}
	if e.TriedPassword {
		tried = append(tried, "a password")
	}
	if len(tried) == 0 {
		tried = append(tried, "nothing")
	}
	msg := "the agent accepted none of: " + strings.Join(tried, ", ") + ". Add this browser's key to the job's keys, or pick a key file"
	if e.PasswordAllowed() {
		msg += ", or enter the agent's password"
	}
	return msg
}

// callback picks the next way to log in, given what the agent allows; it
// tries keys once, then the password once, then gives up with an
// *AuthError.
func (l Login) callback() ssh.ClientAuthCallback {
	var triedKeys bool
	var e AuthError
	return func(ctx *ssh.ClientAuthContext) (ssh.AuthMethod, error) {
		e.Allowed = ctx.AllowedMethods
		if !triedKeys && len(l.Signers) > 0 && slices.Contains(ctx.AllowedMethods, "publickey") {
			triedKeys, e.Keys = true, len(l.Signers)
			return ssh.PublicKeys(l.Signers...), nil
		}
		if !e.TriedPassword && l.Password != "" && e.PasswordAllowed() {
			e.TriedPassword = true
			return ssh.Password(l.Password), nil
		}
		err := e
		return nil, &err
	}
}

// PassphraseError: the key file is encrypted, and the passphrase is
// missing or wrong.
type PassphraseError struct {
	Wrong bool // a passphrase was given and did not open the key
}

func (e *PassphraseError) Error() string {
	if e.Wrong {
		return "the passphrase does not open this key file; try again"
	}
	return "this key file is encrypted: enter its passphrase"
}

// ParseKeyFile reads an OpenSSH (or PEM) private key a user picked,
// opening it with passphrase when it is encrypted. The key stays in
// memory only.
func ParseKeyFile(data []byte, passphrase string) (ssh.Signer, error) {
	s, err := ssh.ParsePrivateKey(data)
	var missing *ssh.PassphraseMissingError
	if !errors.As(err, &missing) {
		if err != nil {
			return nil, fmt.Errorf("the file is not an SSH private key (%v): pick the private key, not the .pub file", err)
		}
		return s, nil
	}
	if passphrase == "" {
		return nil, &PassphraseError{}
	}
	s, err = ssh.ParsePrivateKeyWithPassphrase(data, []byte(passphrase))
	if errors.Is(err, x509.IncorrectPasswordError) {
		return nil, &PassphraseError{Wrong: true}
	}
	if err != nil {
		return nil, fmt.Errorf("open the encrypted key file: %w", err)
	}
	return s, nil
}
