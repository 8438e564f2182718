package sshd

import (
	"os/exec"

	"github.com/gliderlabs/ssh"
)

// keepShell runs the shell as any session on Windows: ConPTY shells are
// not kept (yet), so attach finds none.
func (d *Server) keepShell(s ssh.Session, cmd *exec.Cmd, onEnd func()) (int, error) {
	defer onEnd()
	return d.run(s, cmd)
}

func (n *shellNames) hangUp(*shell) {}
