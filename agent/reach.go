package agent

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"net/http"
	"syscall"

	"github.com/converge-ci/converge/internal/wsconn"
)

// firstTries is how many times the first registration tries again after
// an answer that is final unless the server was just starting or a limit
// just cleared: the connection refused (nothing listens at that host and
// port), or 429 (too many agents).
const firstTries = 4

// UnreachableError ends an agent that never registered: the server could
// not be reached, or refused it, at the first registration. Err is the
// cause; retrying would not have helped, or the agent was stopped (its
// connect timeout, a signal) before it ever registered.
type UnreachableError struct {
	Server string
	Err    error
}

func (e *UnreachableError) Error() string {
	return fmt.Sprintf("could not reach the server %s: %v%s", e.Server, e.Err, hint(e.Err))
}

func (e *UnreachableError) Unwrap() error { return e.Err }

// firstFailure reports whether err, met on the try-th failed attempt at
// the first registration, ends the agent: a certificate the agent does not
// trust or a name that does not resolve at once, a refused connection or a
// 429 after firstTries. Anything else (a timeout, a 5xx, a dropped
// connection) may pass, and is retried until the agent is stopped.
func firstFailure(err error, try int) bool {
	var dns *net.DNSError
	var re *wsconn.RefusedError
	switch {
	case untrusted(err):
		return true
	case errors.As(err, &dns) && dns.IsNotFound:
		return true
	case errors.As(err, &re) && re.Status == http.StatusTooManyRequests,
		errors.Is(err, syscall.ECONNREFUSED):
		return try >= firstTries
	}
	return false
}

// untrusted reports whether err is the server's certificate failing the
// agent's checks.
func untrusted(err error) bool {
	var verify *tls.CertificateVerificationError
	var unknown x509.UnknownAuthorityError
	var host x509.HostnameError
	var invalid x509.CertificateInvalidError
	return errors.As(err, &verify) || errors.As(err, &unknown) || errors.As(err, &host) || errors.As(err, &invalid)
}

// hint says what to do about err, after a "; ", or nothing.
func hint(err error) string {
	var dns *net.DNSError
	var re *wsconn.RefusedError
	switch {
	case untrusted(err):
		return "; if the server's certificate is from a private CA, point SSL_CERT_FILE at that CA's certificate (PEM)"
	case errors.As(err, &dns) && dns.IsNotFound:
		return "; check the host name in the server URL"
	case errors.As(err, &re) && re.Status == http.StatusTooManyRequests:
		return "; the server limits agents per address (--max-agents-per-addr): try again later, or ask its operator"
	case errors.Is(err, syscall.ECONNREFUSED):
		return "; is the server running, and are the host and port in the URL right?"
	}
	return ""
}
