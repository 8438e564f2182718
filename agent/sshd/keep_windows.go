package sshd

import (
	"os/exec"

	"github.com/gliderlabs/ssh"
)

// keepShell runs the shell as any session on Windows: ConPTY shells are
// not kept (yet), so attach finds none.
func (d *Server) keepShell(s ssh.Session, cmd *exec.Cmd, tap *shellTap, onEnd func()) (int, error) {
	defer onEnd()
	defer tap.close()
	return d.runTapped(s, cmd, tap)
}

func (n *shellNames) hangUp(*shell) {}
