package sshd

import (
	"errors"
	"io"

	"github.com/gliderlabs/ssh"
	"github.com/pkg/sftp"

	"github.com/converge-ci/converge/agent/journal"
)

// handleSFTP serves the sftp subsystem, rooted at the agent's directory for
// relative paths.
func (d *Server) handleSFTP(s ssh.Session) {
	if isObserver(s.Context()) {
		s.Stderr().Write([]byte(d.readOnly("SFTP") + "\n"))
		s.Exit(1)
		return
	}
	cs := &countedSession{Session: s}
	end := d.journalSession(s.Context(), &journal.Session{ID: d.nextSessionID(), Kind: "sftp"})
	defer func() { end(0, cs.in.Load(), cs.out.Load()) }()
	srv, err := sftp.NewServer(cs, sftp.WithServerWorkingDirectory(d.cfg.Dir))
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
