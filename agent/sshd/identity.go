package sshd

import (
	"context"
	"crypto/subtle"
	"encoding/hex"
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/gliderlabs/ssh"
	gossh "golang.org/x/crypto/ssh"

	"github.com/converge-ci/converge/agent/journal"
)

// identityKey is the gossh.Permissions.ExtraData key of the
// *journal.Login of the key that the public-key callback accepted.
type identityKey struct{}

// errNotAuthorized: the key offered is in no key source.
var errNotAuthorized = errors.New("key not authorized")

// publicKey runs for every key a client offers, not only the one that
// finally logs in (CVE-2024-45337): it must not remember keys. What it
// learns of a key it accepts (whose it is) goes into a Permissions of
// that key's own, which x/crypto hands back for the key whose signature
// it verified (see verified). gliderlabs returns the context's
// Permissions for the key, so a fresh one is put there for each key.
func (a *authorizer) publicKey(ctx ssh.Context, key ssh.PublicKey) bool {
	if !a.userOK(ctx, key) {
		return false
	}
	login, perms, err := a.check(ctx.User(), key)
	if err != nil {
		a.refuse(ctx, key, err.Error())
		return false
	}
	login.Way, login.Client = wayIn(ctx.ClientVersion())
	perms.ExtraData = map[any]any{identityKey{}: login}
	ctx.SetValue(ssh.ContextKeyPermissions, &ssh.Permissions{Permissions: perms})
	return true
}

// verified is x/crypto's VerifiedPublicKeyCallback for the connection of
// ctx: it runs once, after the client proved it holds the key, with the
// Permissions publicKey made for that very key. It records the login in
// the journal (and its logout when the connection ends).
func (a *authorizer) verified(ctx ssh.Context) func(gossh.ConnMetadata, gossh.PublicKey, *gossh.Permissions, string) (*gossh.Permissions, error) {
	return func(conn gossh.ConnMetadata, _ gossh.PublicKey, perms *gossh.Permissions, _ string) (*gossh.Permissions, error) {
		login, _ := perms.ExtraData[identityKey{}].(*journal.Login)
		if login == nil { // a key publicKey never accepted: cannot happen
			return nil, errors.New("no identity for the verified key")
		}
		a.loggedIn(ctx, connID(conn.SessionID()), login)
		return perms, nil
	}
}

// loginOf is who logged in on the connection of ctx: the identity in the
// Permissions of the key (or password) x/crypto authenticated, nil
// before that.
func loginOf(ctx ssh.Context) *journal.Login {
	sc, _ := ctx.Value(ssh.ContextKeyConn).(*gossh.ServerConn)
	if sc == nil || sc.Permissions == nil {
		return nil
	}
	l, _ := sc.Permissions.ExtraData[identityKey{}].(*journal.Login)
	return l
}

// loggedIn records a login, and the logout when ctx (the connection)
// ends.
func (a *authorizer) loggedIn(ctx context.Context, conn string, login *journal.Login) {
	a.journal.Append(journal.Entry{Kind: journal.KindLogin, Conn: conn, Login: login})
	context.AfterFunc(ctx, func() {
		a.journal.Append(journal.Entry{Kind: journal.KindLogout, Conn: conn})
	})
}

// maxJournalRefusals bounds the refusals the journal keeps: anyone who
// reaches the relay can be refused, and the journal lives in memory.
// Later refusals are still logged, without the journal.
const maxJournalRefusals = 1000

// refused records a refusal (e's Kind is set here): in the journal, or
// past maxJournalRefusals in the log alone.
func (a *authorizer) refused(e journal.Entry) {
	e.Kind = journal.KindRefused
	n := a.refusals.Add(1)
	if n <= maxJournalRefusals {
		a.journal.Append(e)
		return
	}
	if n == maxJournalRefusals+1 {
		a.log.Warn("many refused logins: further ones are logged but not kept in the journal", "kept", maxJournalRefusals)
	}
	fp, user := "", ""
	if e.Login != nil {
		fp, user = e.Login.Fingerprint, e.Login.User
	}
	a.log.Warn("login refused", "conn", e.Conn, "user", user, "fingerprint", fp, "note", e.Note)
}

// refuse records a refused key.
func (a *authorizer) refuse(ctx ssh.Context, key ssh.PublicKey, why string) {
	l := &journal.Login{User: ctx.User(), Method: "publickey", KeyType: key.Type(), Fingerprint: gossh.FingerprintSHA256(key)}
	if cert, ok := key.(*gossh.Certificate); ok {
		l.Method, l.KeyType, l.Fingerprint = "certificate", cert.Key.Type(), gossh.FingerprintSHA256(cert.Key)
		l.CertKeyID, l.CertSerial, l.CA = cert.KeyId, cert.Serial, gossh.FingerprintSHA256(cert.SignatureKey)
	}
	l.Way, l.Client = wayIn(ctx.ClientVersion())
	a.refused(journal.Entry{Conn: ctxConn(ctx), Login: l, Note: why})
}

// check finds what authorizes key for user: an authorized key, or for a
// certificate a CA that signed it for one of the principals allowed.
func (a *authorizer) check(user string, key ssh.PublicKey) (*journal.Login, *gossh.Permissions, error) {
	if cert, ok := key.(*gossh.Certificate); ok {
		return a.checkCert(user, cert)
	}
	for _, k := range a.keys() {
		if !k.ca && sameKey(k.PublicKey, key) {
			return &journal.Login{User: user, Method: "publickey", KeyType: key.Type(),
				Fingerprint: gossh.FingerprintSHA256(key), Comment: k.comment, Source: k.source}, &gossh.Permissions{}, nil
		}
	}
	if k, ok := a.observers.find(key); ok { // observer.go
		return &journal.Login{User: user, Method: "publickey", KeyType: key.Type(), Fingerprint: gossh.FingerprintSHA256(key),
			Comment: k.comment, Source: k.source, Observer: true}, observerPermissions(), nil
	}
	return nil, nil, errNotAuthorized
}

// supportedCriticalOptions are the certificate critical options the
// agent enforces (source-address, by x/crypto); a certificate with any
// other (force-command, verify-required) is refused, as OpenSSH refuses
// options it does not know.
var supportedCriticalOptions = []string{"source-address"}

// checkCert accepts a user certificate signed by a CA of a cert-authority
// line or the trusted CA file, valid now, with the critical options
// above only, and naming a principal the CA's line allows (principals=,
// else the SSH user name).
func (a *authorizer) checkCert(user string, cert *gossh.Certificate) (*journal.Login, *gossh.Permissions, error) {
	if cert.CertType != gossh.UserCert {
		return nil, nil, errors.New("not a user certificate")
	}
	err := fmt.Errorf("certificate %q (serial %d) is signed by a CA that is not trusted (%s)", cert.KeyId, cert.Serial, gossh.FingerprintSHA256(cert.SignatureKey))
	for _, k := range a.keys() {
		if !k.ca || !sameKey(k.PublicKey, cert.SignatureKey) {
			continue
		}
		allowed := k.principals
		if len(allowed) == 0 {
			allowed = []string{user}
		}
		i := slices.IndexFunc(allowed, func(p string) bool { return slices.Contains(cert.ValidPrincipals, p) })
		if i < 0 {
			err = fmt.Errorf("certificate %q names principals %q, none of %q", cert.KeyId, cert.ValidPrincipals, allowed)
			continue
		}
		checker := gossh.CertChecker{SupportedCriticalOptions: supportedCriticalOptions}
		if cerr := checker.CheckCert(allowed[i], cert); cerr != nil {
			err = fmt.Errorf("certificate %q: %w", cert.KeyId, cerr)
			continue
		}
		return &journal.Login{User: user, Method: "certificate", KeyType: cert.Key.Type(),
				Fingerprint: gossh.FingerprintSHA256(cert.Key), CertKeyID: cert.KeyId, CertSerial: cert.Serial,
				Principal: allowed[i], CA: caName(k)},
			&gossh.Permissions{CriticalOptions: cert.CriticalOptions, Extensions: cert.Extensions}, nil
	}
	return nil, nil, err
}

// caName shows a CA: its fingerprint, and its line's comment.
func caName(k authKey) string {
	fp := gossh.FingerprintSHA256(k.PublicKey)
	if k.comment != "" {
		return fp + " " + k.comment
	}
	return fp
}

func sameKey(a, b gossh.PublicKey) bool {
	return subtle.ConstantTimeCompare(a.Marshal(), b.Marshal()) == 1
}

// webtermVersion is in the SSH version string of Converge's browser
// terminal (package webterm).
const webtermVersion = "Converge_webterm"

// wayIn tells the browser terminal from other SSH clients by the version
// string the client sent: the client's own word, which any client could
// imitate, so it says how someone came in, never who they are.
func wayIn(clientVersion string) (way, client string) {
	if strings.Contains(clientVersion, webtermVersion) {
		return journal.WayBrowser, clientVersion
	}
	return journal.WaySSH, clientVersion
}

// connID is how the journal names a connection: the first 8 hex digits
// of its SSH session ID, as the log's "session" attribute did.
func connID(sessionID []byte) string {
	id := hex.EncodeToString(sessionID)
	if len(id) > 8 {
		id = id[:8]
	}
	return id
}

// ctxConn is connID for a connection's context, whose SessionID is hex
// already.
func ctxConn(ctx ssh.Context) string {
	id := ctx.SessionID()
	if len(id) > 8 {
		id = id[:8]
	}
	return id
}
