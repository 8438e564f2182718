// Package recording records the agent's interactive shells as asciicast
// v2 streams (output and window sizes; input only when asked), encrypted
// with age to the team's keys as they are written, in the job itself: no
// plaintext of a session ever reaches the disk, the relay or anyone
// without a recipient's key.
//
// # Files
//
// A shell's recording is a set of parts, NAME.0000.cast.age,
// NAME.0001.cast.age, ..., each a complete age file; decrypted and
// concatenated in order they are one asciicast (the header is in part
// 0, and parts end on whole event lines):
//
//	for f in NAME.*.cast.age; do age -d -i ~/.ssh/id_ed25519 "$f"; done | asciinema play -
//
// Most shells fit in one part. Why parts: age's STREAM format encrypts
// 64 KiB chunks and marks the last one, so an open age file cannot be
// made readable without ending it. Instead, every FlushEvery (2 s) a
// shell that printed something has its open part written again, whole,
// to a temporary file renamed over the part, so the files on disk are
// always complete age files and a job killed with -9 loses at most the
// last FlushEvery of output. The open part's plaintext is kept in memory
// until it reaches PartSize (1 MiB), when it is written a last time and
// a new part begins: rewriting costs at most PartSize of encryption per
// flush, and the part count grows only with output, not with time.
//
// It is not a recorder of exec sessions, SFTP or forwarding: those are in
// the journal by their counts and targets, and cost nothing here.
package recording

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"time"

	"filippo.io/age"
)

// Defaults of Config.
const (
	DefaultFlushEvery = 2 * time.Second
	DefaultPartSize   = 1 << 20
)

// Config of a Recorder.
type Config struct {
	// Dir holds the recordings; it is made (0700) when missing. Required.
	Dir string
	// Recipients may decrypt the recordings. Required.
	Recipients []age.Recipient
	// Input records what users type too ("i" events). False: output and
	// window sizes only, so passwords typed at a prompt are not kept.
	Input bool
	// FlushEvery bounds how much output a killed job loses. Zero:
	// DefaultFlushEvery.
	FlushEvery time.Duration
	// PartSize is the plaintext size at which a part is closed and the
	// next begins. Zero: DefaultPartSize.
	PartSize int
	// Logger gets write failures. Nil: slog.Default().
	Logger *slog.Logger
}

// Recorder starts the recordings of one agent's shells.
type Recorder struct {
	cfg Config
}

// New checks cfg and makes its Dir.
func New(cfg Config) (*Recorder, error) {
	if cfg.Dir == "" {
		return nil, errors.New("recording: no folder given")
	}
	if len(cfg.Recipients) == 0 {
		return nil, errors.New("recording: no recipients given")
	}
	if cfg.FlushEvery <= 0 {
		cfg.FlushEvery = DefaultFlushEvery
	}
	if cfg.PartSize <= 0 {
		cfg.PartSize = DefaultPartSize
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if err := os.MkdirAll(cfg.Dir, 0o700); err != nil {
		return nil, fmt.Errorf("recordings folder: %w", err)
	}
	return &Recorder{cfg: cfg}, nil
}

// Dir is the folder of the recordings.
func (r *Recorder) Dir() string { return r.cfg.Dir }

// Header describes a shell as its recording starts.
type Header struct {
	Width, Height int
	Term, Shell   string
	Title         string // who and which session, for a player's title
}

// Start begins recording a shell as the parts NAME.NNNN.cast.age (name
// must be a plain file name: the journal's session ID and a time, say)
// and writes part 0 with the header at once. The Cast must be closed.
// sealed, when not nil, is called with each part's file name and the hex
// SHA-256 of its file once the part is written for the last time (full,
// or at Close), on the Cast's writer goroutine: the journal lists them,
// so the signed receipt vouches for the files (anyone can encrypt a file
// to public recipients; only the agent's host key signs the receipt).
func (r *Recorder) Start(name string, h Header, sealed func(file, sha256 string)) (*Cast, error) {
	if name == "" || filepath.Base(name) != name || name[0] == '.' {
		return nil, fmt.Errorf("recording: bad name %q", name)
	}
	now := time.Now()
	c := &Cast{r: r, base: filepath.Join(r.cfg.Dir, name), start: now, stop: make(chan struct{}),
		kick: make(chan struct{}, 1), done: make(chan struct{}), sealed: sealed}
	c.parts = []*part{{}}
	c.parts[0].buf = header(h, now)
	sum, err := c.write(0, c.parts[0].buf)
	if err != nil {
		return nil, err
	}
	c.parts[0].written, c.parts[0].sum = len(c.parts[0].buf), sum
	go c.loop()
	return c, nil
}

// Part is the file name of part n of the recording started as name.
func Part(name string, n int) string { return fmt.Sprintf("%s.%04d.cast.age", name, n) }

// Cast is one shell's recording. Its methods are safe for concurrent use,
// and do nothing once it is closed.
type Cast struct {
	// Set at construction.
	r     *Recorder
	base  string
	start time.Time
	stop  chan struct{} // closed by Close
	// sealed gets each part's final file hash; writer goroutine only.
	sealed func(file, sha256 string)
	kick   chan struct{} // a part is full: write it now
	done   chan struct{} // closed when the writer has ended

	// Under mu. parts holds the parts not yet written whole, the open one
	// last; bytes of a part's buf up to its length never change, so the
	// writer reads a slice of it outside the lock.
	mu      sync.Mutex
	parts   []*part
	carry   [2][]byte // an incomplete UTF-8 sequence of output, input
	closed  bool
	written int64 // plaintext bytes on disk, for tests and logs
	failed  error // the first write error
}

type part struct {
	n       int
	buf     []byte
	written int    // len(buf) when last written
	sum     string // hex SHA-256 of the file as last written
	sealed  bool   // reported as sealed
}

// Output records what the shell printed.
func (c *Cast) Output(p []byte) { c.event('o', p) }

// Input records what a user typed, when the Recorder records input.
func (c *Cast) Input(p []byte) {
	if c.r.cfg.Input {
		c.event('i', p)
	}
}

// Resize records a new window size.
func (c *Cast) Resize(width, height int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.closed {
		c.appendLocked(eventLine(time.Since(c.start), 'r', fmt.Sprintf("%dx%d", width, height)))
	}
}

func (c *Cast) event(kind byte, p []byte) {
	if len(p) == 0 {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return
	}
	i := 0
	if kind == 'i' {
		i = 1
	}
	text, rest := completeUTF8(append(c.carry[i], p...))
	c.carry[i] = rest
	if len(text) > 0 {
		c.appendLocked(eventLine(time.Since(c.start), kind, string(text)))
	}
}

// appendLocked adds an event line to the open part, and opens the next
// part when it is full.
func (c *Cast) appendLocked(line []byte) {
	open := c.parts[len(c.parts)-1]
	open.buf = append(open.buf, line...)
	if len(open.buf) >= c.r.cfg.PartSize {
		c.parts = append(c.parts, &part{n: open.n + 1})
		select {
		case c.kick <- struct{}{}:
		default:
		}
	}
}

// Close writes what is left and ends the recording. It returns the first
// error writing the files met, if any.
func (c *Cast) Close() error {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		<-c.done
		return c.err()
	}
	c.closed = true
	for i, k := range []byte{'o', 'i'} {
		if len(c.carry[i]) > 0 {
			c.appendLocked(eventLine(time.Since(c.start), k, string(c.carry[i])))
		}
	}
	c.mu.Unlock()
	close(c.stop)
	<-c.done
	return c.err()
}

func (c *Cast) err() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.failed
}

// Written is how many bytes of the asciicast are on disk (encrypted).
func (c *Cast) Written() int64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.written
}

// loop is the Cast's writer: it writes the parts that changed every
// FlushEvery, at once when a part is full, and a last time at Close.
func (c *Cast) loop() {
	defer close(c.done)
	t := time.NewTicker(c.r.cfg.FlushEvery)
	defer t.Stop()
	for {
		select {
		case <-t.C:
		case <-c.kick:
		case <-c.stop:
			c.flush()
			return
		}
		c.flush()
	}
}

// flush writes every part that grew since it was last written, and
// forgets the full parts that are written, reporting them as sealed (and
// the last one too once the Cast is closed).
func (c *Cast) flush() {
	type todo struct {
		p   *part
		buf []byte
	}
	var work []todo
	c.mu.Lock()
	for _, p := range c.parts {
		if len(p.buf) > p.written {
			work = append(work, todo{p, p.buf[:len(p.buf):len(p.buf)]})
		}
	}
	c.mu.Unlock()
	for _, w := range work {
		sum, err := c.write(w.p.n, w.buf)
		c.mu.Lock()
		if err != nil && c.failed == nil {
			c.failed = err
			c.r.cfg.Logger.Warn("cannot write a recording", "file", Part(c.base, w.p.n), "error", err)
		}
		if err == nil {
			c.written += int64(len(w.buf) - w.p.written)
			w.p.written, w.p.sum = len(w.buf), sum
		}
		c.mu.Unlock()
	}
	// flush runs on the writer goroutine only, which alone touches sealed.
	var sealed []*part
	add := func(p *part) {
		if !p.sealed {
			p.sealed = true
			sealed = append(sealed, p)
		}
	}
	c.mu.Lock()
	for len(c.parts) > 1 && c.parts[0].written == len(c.parts[0].buf) {
		add(c.parts[0])
		c.parts = c.parts[1:]
	}
	if c.closed && len(c.parts) == 1 && c.parts[0].written == len(c.parts[0].buf) {
		add(c.parts[0])
	}
	c.mu.Unlock()
	for _, p := range sealed {
		if c.sealed != nil && p.sum != "" {
			c.sealed(filepath.Base(Part(c.base, p.n)), p.sum)
		}
	}
}

// write encrypts plaintext, the whole of part n so far, to a temporary
// file and renames it over the part, so the part on disk is always a
// complete age file. It returns the hex SHA-256 of the file.
func (c *Cast) write(n int, plaintext []byte) (string, error) {
	final := Part(c.base, n)
	tmp := filepath.Join(filepath.Dir(final), "."+filepath.Base(final)+".tmp")
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return "", err
	}
	h := sha256.New()
	w, err := age.Encrypt(io.MultiWriter(f, h), c.r.cfg.Recipients...)
	if err == nil {
		_, err = w.Write(plaintext)
	}
	if err == nil {
		err = w.Close()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, final)
	}
	if err != nil {
		os.Remove(tmp)
		return "", fmt.Errorf("write recording %s: %w", final, err)
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}
