package agent

import (
	"context"
	"net"
	"time"

	"github.com/gliderlabs/ssh"
	gossh "golang.org/x/crypto/ssh"
)

// handshakeTimeout bounds an SSH handshake: neither x/crypto/ssh nor
// gliderlabs/ssh bounds it, and a stream that never completes one must not
// hold resources.
const handshakeTimeout = 30 * time.Second

// newSSHServer builds the embedded SSH server. Authentication always goes
// through the authorizer: a gliderlabs server with no auth handler would
// let everyone in.
func (a *Agent) newSSHServer() *ssh.Server {
	srv := &ssh.Server{
		Version:          "Converge_" + a.cfg.Version,
		Handler:          a.handleSession,
		PublicKeyHandler: a.auth.publicKey,
		SubsystemHandlers: map[string]ssh.SubsystemHandler{
			"sftp": a.handleSFTP,
		},
		// Port forwarding in both directions (forward.go).
		ChannelHandlers: map[string]ssh.ChannelHandler{
			"session":                        ssh.DefaultSessionHandler,
			"direct-tcpip":                   a.fwd.directTCPIP,
			"direct-streamlocal@openssh.com": a.fwd.directStreamLocal,
		},
		RequestHandlers: map[string]ssh.RequestHandler{
			"tcpip-forward":        a.fwd.tcpipForward,
			"cancel-tcpip-forward": a.fwd.tcpipForward,
		},
		// Explicit rather than x/crypto's default, which it matches.
		ServerConfigCallback: func(ssh.Context) *gossh.ServerConfig {
			return &gossh.ServerConfig{MaxAuthTries: maxAuthTries}
		},
		ConnCallback: func(ctx ssh.Context, conn net.Conn) net.Conn {
			// Close the connection if the handshake has not finished in
			// time; gliderlabs stores the ServerConn in ctx once it has.
			t := time.AfterFunc(handshakeTimeout, func() {
				if ctx.Value(ssh.ContextKeyConn) == nil {
					a.log.Warn("ssh handshake timed out", "timeout", handshakeTimeout)
					conn.Close()
				}
			})
			context.AfterFunc(ctx, func() { t.Stop() })
			return conn
		},
	}
	if a.auth.password != "" {
		srv.PasswordHandler = a.auth.passwordOK
	}
	srv.AddHostKey(a.signer)
	confirmLogins(srv)
	return srv
}
