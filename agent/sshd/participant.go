package sshd

import (
	"github.com/gliderlabs/ssh"
	gossh "golang.org/x/crypto/ssh"
)

// participant is who a connection is, as kept shells show it.
type participant struct {
	name     string // e.g. alice@laptop (SHA256:…)
	observer bool   // logged in with an observer key: may only watch
}

// participant returns who logged in on the connection of ctx.
func (d *Server) participant(ctx ssh.Context) participant {
	if name, ok := observerName(ctx); ok {
		return participant{name: name, observer: true}
	}
	name := ctx.User()
	if k, ok := ctx.Value(ssh.ContextKeyPublicKey).(ssh.PublicKey); ok && k != nil {
		name += " (" + gossh.FingerprintSHA256(k) + ")"
	}
	return participant{name: name}
}
