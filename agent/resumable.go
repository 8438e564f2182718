package agent

import (
	"net"

	"github.com/gliderlabs/ssh"
	gossh "golang.org/x/crypto/ssh"
)

// streamKey is the ssh.Context key of the stream an SSH connection runs
// on, as the listener delivered it.
type streamKey struct{}

// confirmer is a stream that keeps its place for a returning client only
// once told that its user logged in: a *resume.Conn (see its Confirm).
type confirmer interface{ Confirm() }

// confirmLogins tells each resumable stream when SSH has logged its user
// in, so that streams nobody logs in on never hold a resume slot for the
// window. Success is x/crypto's AuthLogCallback with a nil error, which it
// calls once per connection, after a verified signature or password; the
// public-key callback is no place for it, as it runs for every key a
// client offers, before any signature. Call confirmLogins after the
// server's callbacks are set; it wraps them.
func confirmLogins(srv *ssh.Server) {
	connCB := srv.ConnCallback
	srv.ConnCallback = func(ctx ssh.Context, conn net.Conn) net.Conn {
		ctx.SetValue(streamKey{}, conn) // before any wrapping
		if connCB != nil {
			return connCB(ctx, conn)
		}
		return conn
	}
	configCB := srv.ServerConfigCallback
	srv.ServerConfigCallback = func(ctx ssh.Context) *gossh.ServerConfig {
		cfg := &gossh.ServerConfig{}
		if configCB != nil {
			cfg = configCB(ctx)
		}
		prev := cfg.AuthLogCallback
		cfg.AuthLogCallback = func(m gossh.ConnMetadata, method string, err error) {
			if prev != nil {
				prev(m, method, err)
			}
			if c, ok := ctx.Value(streamKey{}).(confirmer); ok && err == nil {
				c.Confirm()
			}
		}
		return cfg
	}
}
