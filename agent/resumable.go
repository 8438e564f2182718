package agent

import "net"

// confirmer is a stream that keeps its place for a returning client only
// once told that its user logged in: a *resume.Conn (see its Confirm).
type confirmer interface{ Confirm() }

// confirmLogin is the SSH server's OnLogin: it tells a resumable stream
// that SSH has logged its user in, so that streams nobody logs in on
// never hold a resume slot for the window.
func confirmLogin(c net.Conn) {
	if c, ok := c.(confirmer); ok {
		c.Confirm()
	}
}
