package agent

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"time"

	"filippo.io/age"

	"github.com/converge-ci/converge/agent/journal"
	"github.com/converge-ci/converge/agent/receipt"
	"github.com/converge-ci/converge/agent/recording"
	"github.com/converge-ci/converge/agent/sshd"
)

// recordingsName is the default recordings folder in the state folder.
const recordingsName = "recordings"

// loadRecipients reads Config.RecordTo: a URL (fetched once, as
// --authorized-keys-url is), recipient lines given directly (age1...,
// ssh-ed25519 ..., for a CI secret), or a file of them.
func loadRecipients(src string, client *http.Client) ([]age.Recipient, []string, error) {
	var data []byte
	name := src
	switch {
	case strings.HasPrefix(src, "https://") || strings.HasPrefix(src, "http://"):
		ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
		defer cancel()
		b, err := sshd.FetchKeyLines(ctx, client, src)
		if err != nil {
			return nil, nil, fmt.Errorf("--record-to: %w", err)
		}
		data = b
	case holdsRecipients(src):
		data, name = []byte(src), "--record-to"
	default:
		b, err := os.ReadFile(src)
		if err != nil {
			return nil, nil, fmt.Errorf("--record-to: %w (give a file of public keys, a URL such as https://github.com/USER.keys, or the keys themselves)", err)
		}
		data = b
	}
	rs, skipped, err := recording.ParseRecipients(name, data)
	if err != nil {
		return nil, nil, fmt.Errorf("--record-to: %w", err)
	}
	return rs, skipped, nil
}

// holdsRecipients reports whether s is recipient lines rather than a
// file name.
func holdsRecipients(s string) bool {
	for _, line := range strings.Split(s, "\n") {
		f := strings.Fields(line)
		if len(f) > 0 && (strings.HasPrefix(f[0], "age1") || strings.HasPrefix(f[0], "ssh-")) && len(f[0]) > 8 && (len(f) > 1 || strings.HasPrefix(f[0], "age1")) {
			return true
		}
	}
	return false
}

// recordDir is where recordings and the receipt go.
func (a *Agent) recordDir() string {
	if a.cfg.RecordDir != "" {
		return a.cfg.RecordDir
	}
	return filepath.Join(a.stateDir, recordingsName)
}

// startRecords starts the receipt and, with --record-to, the recorder
// (Run calls it once the state folder is made), and tells the job's log
// how to check and play them.
func (a *Agent) startRecords() error {
	dir := a.recordDir()
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("recordings folder: %w", err)
	}
	if a.recipients != nil {
		r, err := recording.New(recording.Config{Dir: dir, Recipients: a.recipients, Input: a.cfg.RecordInput, Logger: a.log})
		if err != nil {
			return err
		}
		a.recorder = r
	}
	var encrypt []age.Recipient
	if a.cfg.EncryptReceipt {
		encrypt = a.recipients
	}
	w, err := receipt.Start(receipt.Config{Dir: dir, Journal: a.journal, Signer: a.signer, Recipients: encrypt, Logger: a.log})
	if err != nil {
		return err
	}
	a.receipt = w
	principal := "converge-" + a.cfg.ID
	fmt.Fprintf(a.cfg.Out, "Receipt of this job (who logged in, what ran): %s, signed by the host key every minute and at the end.\n"+
		"Check it with this allowed_signers line:\n  %s\n"+
		"  ssh-keygen -Y verify -f allowed_signers -I %s -n %s -s %s < %s\n",
		w.Path(), receipt.AllowedSigners(principal, a.signer.PublicKey()), principal, receipt.Namespace,
		filepath.Base(w.SigPath()), receipt.FileName)
	if a.recorder != nil {
		input := "output only"
		if a.cfg.RecordInput {
			input = "output and input"
		}
		fmt.Fprintf(a.cfg.Out, "Recording every shell (%s), encrypted to %d key(s) from --record-to, in %s\n", input, len(a.recipients), dir)
	}
	return nil
}

// stopReceipt signs the journal a last time; closeState calls it after
// the journal's last entry.
func (a *Agent) stopReceipt() {
	if a.receipt == nil {
		return
	}
	if err := a.receipt.Close(); err != nil {
		a.log.Warn("cannot write the receipt", "error", err)
	}
}

// recordShell is the SSH server's RecordShell: it starts the recording
// of a shell and notes it in the journal.
func (a *Agent) recordShell(info sshd.RecordedShell) (sshd.ShellRecording, error) {
	if a.recorder == nil {
		return nil, nil
	}
	name := time.Now().UTC().Format("20060102T150405Z") + "-" + info.Conn + "-" + info.Session
	title := info.Session
	if info.Login != nil {
		title = info.Login.Name() + " " + info.Session
	}
	ref := &journal.Session{ID: info.Session, Kind: "shell", PTY: true}
	sealed := func(file, sum string) {
		a.journal.Append(journal.Entry{Kind: journal.KindRecorded, Conn: info.Conn, Session: ref, Note: file + " sha256=" + sum})
	}
	c, err := a.recorder.Start(name, recording.Header{Width: info.Width, Height: info.Height, Term: info.Term, Shell: info.Shell, Title: title}, sealed)
	if err != nil {
		a.log.Warn("cannot record the shell; refusing it", "session", info.Session, "error", err)
		return nil, fmt.Errorf("this agent records shells, and cannot record this one: %w", err)
	}
	a.journal.Append(journal.Entry{Kind: journal.KindRecording, Conn: info.Conn, Session: ref, Note: name + ".*.cast.age"})
	return c, nil
}
