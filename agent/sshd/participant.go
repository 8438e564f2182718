package sshd

import (
	"github.com/gliderlabs/ssh"
)

// participant is who a connection is, as kept shells show it.
type participant struct {
	name     string // e.g. alice@laptop (SHA256:…)
	observer bool   // logged in with an observer key: may only watch
	conn     string // the connection, as the journal names it
}

// participant returns who logged in on the connection of ctx: the
// identity the agent checked at login (loginOf), and the role that the
// Permissions of the verified key carry.
func (d *Server) participant(ctx ssh.Context) participant {
	p := participant{name: ctx.User(), observer: isObserver(ctx), conn: ctxConn(ctx)}
	if l := loginOf(ctx); l != nil {
		p.name = l.Name()
		if l.Fingerprint != "" && l.Name() != l.Fingerprint {
			p.name += " (" + l.Fingerprint + ")"
		}
	}
	return p
}
