// Package receipt keeps a signed receipt of the agent's journal: the
// journal's JSON lines, hash-chained already, in receipt.jsonl, and their
// signature by the agent's host key in OpenSSH's SSHSIG format in
// receipt.jsonl.sig, written when the agent starts, every minute while
// the journal grows, and when the agent ends. Anyone can check it with
// the stock tools against the host key the agent printed in the job's
// log, which the relay cannot write:
//
//	ssh-keygen -Y verify -f allowed_signers -I converge-ID \
//	    -n converge-receipt@converge -s receipt.jsonl.sig < receipt.jsonl
//
// Changing, dropping or adding any byte fails the check; the chain of
// hashes inside (agent journal receipt.jsonl) also says where a copy
// without its signature was changed.
//
// The receipt holds no session bytes and no typed text (see package
// journal). It is plaintext unless Config.Recipients is set: then it is
// receipt.jsonl.age, and the signature is over the plaintext.
package receipt

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"time"

	"filippo.io/age"
	gossh "golang.org/x/crypto/ssh"

	"github.com/converge-ci/converge/agent/journal"
)

// File names in Config.Dir.
const (
	FileName = "receipt.jsonl"
	SigName  = FileName + ".sig"
	AgeName  = FileName + ".age"
)

// DefaultEvery is how often a growing journal is signed again.
const DefaultEvery = time.Minute

// Config of a Writer.
type Config struct {
	// Dir holds the receipt; it is made (0700) when missing. Required.
	Dir string
	// Journal is what the receipt is of. Required.
	Journal *journal.Journal
	// Signer is the agent's host key. Required.
	Signer gossh.Signer
	// Every is how often a journal that grew is signed again. Zero:
	// DefaultEvery.
	Every time.Duration
	// Recipients, when set, encrypt the receipt with age (AgeName).
	// Nil: plaintext.
	Recipients []age.Recipient
	// Logger gets write failures. Nil: slog.Default().
	Logger *slog.Logger
}

// Writer keeps the receipt of one journal up to date. Close it.
type Writer struct {
	cfg  Config
	stop chan struct{}
	done chan struct{}

	signed int // entries in the receipt on disk; writer goroutine, then Close
}

// Start writes the receipt now and then keeps it up to date until Close.
func Start(cfg Config) (*Writer, error) {
	if cfg.Dir == "" || cfg.Journal == nil || cfg.Signer == nil {
		return nil, errors.New("receipt: Dir, Journal and Signer are required")
	}
	if cfg.Every <= 0 {
		cfg.Every = DefaultEvery
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if err := os.MkdirAll(cfg.Dir, 0o700); err != nil {
		return nil, fmt.Errorf("receipt folder: %w", err)
	}
	w := &Writer{cfg: cfg, stop: make(chan struct{}), done: make(chan struct{})}
	if err := w.write(); err != nil {
		return nil, err
	}
	go w.loop()
	return w, nil
}

func (w *Writer) loop() {
	defer close(w.done)
	t := time.NewTicker(w.cfg.Every)
	defer t.Stop()
	for {
		select {
		case <-t.C:
			if err := w.write(); err != nil {
				w.cfg.Logger.Warn("cannot write the receipt", "error", err)
			}
		case <-w.stop:
			return
		}
	}
}

// Close signs the journal a last time (after the agent's end entry) and
// stops the Writer. It returns that last write's error.
func (w *Writer) Close() error {
	close(w.stop)
	<-w.done
	return w.write()
}

// Path is the receipt's file, and SigPath its signature's.
func (w *Writer) Path() string {
	if w.cfg.Recipients != nil {
		return filepath.Join(w.cfg.Dir, AgeName)
	}
	return filepath.Join(w.cfg.Dir, FileName)
}
func (w *Writer) SigPath() string { return filepath.Join(w.cfg.Dir, SigName) }

// write signs the journal's entries so far, unless the receipt on disk
// has them all. The signature is renamed into place first: a reader
// between the two renames sees a pair that fails to verify, never a
// receipt that passes with entries missing from what it claims.
func (w *Writer) write() error {
	entries := w.cfg.Journal.Entries()
	if len(entries) == w.signed && w.signed > 0 {
		return nil
	}
	var body bytes.Buffer
	for _, e := range entries {
		line, err := json.Marshal(e)
		if err != nil {
			return err
		}
		body.Write(append(line, '\n'))
	}
	sig, err := Sign(w.cfg.Signer, Namespace, body.Bytes())
	if err != nil {
		return err
	}
	content := body.Bytes()
	if w.cfg.Recipients != nil {
		var enc bytes.Buffer
		aw, err := age.Encrypt(&enc, w.cfg.Recipients...)
		if err == nil {
			_, err = aw.Write(content)
		}
		if err == nil {
			err = aw.Close()
		}
		if err != nil {
			return fmt.Errorf("receipt: encrypt: %w", err)
		}
		content = enc.Bytes()
	}
	if err := replace(w.SigPath(), sig); err != nil {
		return err
	}
	if err := replace(w.Path(), content); err != nil {
		return err
	}
	w.signed = len(entries)
	return nil
}

// replace writes b to a temporary file next to path and renames it over
// path.
func replace(path string, b []byte) error {
	tmp := filepath.Join(filepath.Dir(path), "."+filepath.Base(path)+".tmp")
	if err := os.WriteFile(tmp, b, 0o600); err != nil {
		return fmt.Errorf("receipt: %w", err)
	}
	if err := os.Rename(tmp, path); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("receipt: %w", err)
	}
	return nil
}
