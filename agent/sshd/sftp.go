package sshd

import (
	"errors"
	"io"

	"github.com/gliderlabs/ssh"
	"github.com/pkg/sftp"
)

// handleSFTP serves the sftp subsystem, rooted at the agent's directory for
// relative paths.
func (d *Server) handleSFTP(s ssh.Session) {
	if isObserver(s.Context()) {
		s.Stderr().Write([]byte(d.readOnly("SFTP") + "\n"))
		s.Exit(1)
		return
	}
	srv, err := sftp.NewServer(s, sftp.WithServerWorkingDirectory(d.cfg.Dir))
	if err != nil {
		d.log.Error("sftp server", "error", err)
		s.Exit(1)
		return
	}
	defer srv.Close()
	if err := srv.Serve(); err != nil && !errors.Is(err, io.EOF) {
		d.log.Warn("sftp session ended", "error", err)
	}
	s.Exit(0)
}
