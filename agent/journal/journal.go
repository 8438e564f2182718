// Package journal is the agent's record of what happens in its job: who
// logged in or was refused, which sessions ran and how they ended, and,
// as later features add them, attaches to kept shells, refused read-only
// keystrokes and `agent run` decisions. The job's log lines for these
// events, `converge who`, the Action's summary and a signed receipt are
// all views of it.
//
// A Journal is append-only. Each Entry carries the SHA-256 of the JSON
// line of the entry before it (Prev), so the file is a hash chain: an
// entry changed, dropped or reordered after the fact breaks every later
// link (see Verify). Entries are kept in memory, appended as JSON lines to
// a file (see Open), logged once each, and sent to subscribers (live
// views).
//
// It is not a general event bus: it holds only what a person would ask
// about afterwards ("who was in this job, and what did they do?"), never
// session bytes, keystrokes or secrets.
//
// # Adding a kind of event
//
// Add a Kind constant below, and either a typed detail struct with a
// pointer field in Entry (as Login and Session), or use Entry.Data for a
// small JSON object of your own. Add its log line in logLine (kinds it
// does not know are logged by name with Note). Readers skip kinds they do
// not know.
package journal

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/url"
	"os"
	"path"
	"strings"
	"sync"
	"time"
)

// Kind names what an entry records. Values are stable: they are in files
// other programs read (the Action's summary).
type Kind string

const (
	// KindStart opens every journal: the agent, its ID and host key (Note
	// holds them as "id=... hostkey=SHA256:...").
	KindStart Kind = "start"
	// KindLogin: a user proved a key (or a password); Login says who.
	KindLogin Kind = "login"
	// KindRefused: a login attempt was refused; Login says with what
	// (a key offered, not proved) and Note why.
	KindRefused Kind = "refused"
	// KindSessionStart and KindSessionEnd bracket one SSH session
	// (shell, exec, sftp) or one port forward; Session says which, and a
	// start's Login who logged in on its connection.
	KindSessionStart Kind = "session-start"
	KindSessionEnd   Kind = "session-end"
	// KindLogout: an SSH connection that had logged in ended.
	KindLogout Kind = "logout"
	// Kinds for the work that builds on the journal; their details go in
	// Data or in fields those features add.
	KindAttach       Kind = "attach"         // a user joined a kept shell
	KindDetach       Kind = "detach"         // a user left a kept shell
	KindReadOnlyKeys Kind = "read-only-keys" // keystrokes of a read-only viewer refused
	KindRunDecision  Kind = "run-decision"   // `agent run`: retry, pass or fail
	KindExtend       Kind = "extend"         // converge extend; Note says who, by how much
	KindEnd          Kind = "end"            // the agent ends; Note says why
	// KindRecording: an interactive shell's recording began; Session
	// names the shell, Note the files (NAME.*.cast.age in the recordings
	// folder), encrypted to the team's keys.
	KindRecording Kind = "recording"
	// KindRecorded: a part of a shell's recording was written for the
	// last time; Note is "FILE sha256=HEX" (of the encrypted file), so the
	// signed receipt vouches for the recordings.
	KindRecorded Kind = "recorded"
)

// Way in: how a user reached the agent, as its SSH client announced it.
const (
	WaySSH     = "ssh"
	WayBrowser = "browser"
)

// Entry is one event. Seq, Time and Prev are set by Append.
type Entry struct {
	Seq  uint64    `json:"seq"`
	Time time.Time `json:"time"`
	Kind Kind      `json:"kind"`
	// Conn is the SSH connection the event belongs to (the first 8 hex
	// digits of its session ID), so a reader can tie a session to its
	// login. Empty: the agent itself.
	Conn    string   `json:"conn,omitempty"`
	Login   *Login   `json:"login,omitempty"`
	Session *Session `json:"session,omitempty"`
	// Note is a short human sentence (a refusal's reason, say).
	Note string `json:"note,omitempty"`
	// Data is a kind's own details, for kinds without a typed field.
	Data json.RawMessage `json:"data,omitempty"`
	// Prev is the hex SHA-256 of the previous entry's JSON line (without
	// its newline); empty on the first entry.
	Prev string `json:"prev"`
}

// Login is who logged in, or tried to.
type Login struct {
	User string `json:"user"` // the SSH user name asked for
	// Method is "publickey", "certificate" or "password".
	Method      string `json:"method"`
	KeyType     string `json:"key_type,omitempty"`
	Fingerprint string `json:"fingerprint,omitempty"` // SHA256:...; a certificate's is its signed key's
	// Comment is the authorized_keys comment of the matching line
	// (alice@laptop); Source is where that line came from (a file, a
	// URL such as https://github.com/alice.keys, --authorized-keys-data).
	Comment string `json:"comment,omitempty"`
	Source  string `json:"source,omitempty"`
	// For a certificate: its key ID, serial, the principal that matched,
	// and the fingerprint of the CA that signed it.
	CertKeyID  string `json:"cert_key_id,omitempty"`
	CertSerial uint64 `json:"cert_serial,omitempty"`
	Principal  string `json:"principal,omitempty"`
	CA         string `json:"ca,omitempty"`
	// Way is WaySSH or WayBrowser; Client is the client's version string,
	// from which Way is read (the client's own word: anyone may send any).
	Way    string `json:"way,omitempty"`
	Client string `json:"client,omitempty"`
	// Observer: the key is an observer's (--observer-keys), which may
	// only watch kept shells, read-only.
	Observer bool `json:"observer,omitempty"`
}

// Name is how a person is shown: the comment, else the certificate's key
// ID, else the user of a forge's USER.keys URL the key came from ("alice
// via github.com/alice.keys"), else the fingerprint, else the method.
func (l *Login) Name() string {
	switch {
	case l == nil:
		return ""
	case l.Comment != "":
		return l.Comment
	case l.CertKeyID != "":
		return l.CertKeyID
	}
	if u, err := url.Parse(l.Source); err == nil && u.Host != "" && strings.HasSuffix(u.Path, ".keys") {
		return strings.TrimSuffix(path.Base(u.Path), ".keys") + " via " + u.Host + u.Path
	}
	if l.Fingerprint != "" {
		return l.Fingerprint
	}
	return l.Method
}

// Session is one session or port forward.
type Session struct {
	ID string `json:"id"` // unique within the connection
	// Kind is "shell", "exec", "sftp", "forward-local" (ssh -L) or
	// "forward-remote" (ssh -R).
	Kind    string `json:"kind"`
	Command string `json:"command,omitempty"` // exec's command
	Target  string `json:"target,omitempty"`  // a forward's host:port or socket
	PTY     bool   `json:"pty,omitempty"`
	// Set on KindSessionEnd: the exit status (-1 when none was sent) and
	// the bytes sent to and received from the user.
	Exit     *int  `json:"exit,omitempty"`
	BytesIn  int64 `json:"bytes_in,omitempty"`
	BytesOut int64 `json:"bytes_out,omitempty"`
}

// subscriberBuffer is how many entries a subscriber may fall behind
// before it is cut off.
const subscriberBuffer = 256

// Journal is an append-only, hash-chained list of entries. Its methods
// are safe for concurrent use. The zero value is not usable; see New and
// Open.
type Journal struct {
	log *slog.Logger // nil: entries are not logged

	mu      sync.Mutex
	entries []Entry
	last    [sha256.Size]byte // hash of the last line
	f       *os.File          // nil: memory only
	fileErr error             // the first write error, logged once
	subs    map[chan Entry]struct{}
	closed  bool
}

// New returns a journal kept in memory only. log, when not nil, gets one
// line per entry (the job's log lines of logins and sessions).
func New(log *slog.Logger) *Journal {
	return &Journal{log: log, subs: make(map[chan Entry]struct{})}
}

// Open returns a journal that also appends each entry to f, which it owns
// from now on (Close closes it). f should be opened for appending and be
// empty: a journal is one agent run. A write that fails is logged once
// and the journal goes on in memory.
func Open(f *os.File, log *slog.Logger) *Journal {
	j := New(log)
	j.f = f
	return j
}

// Persist makes a journal kept in memory so far append to f from now on,
// after writing f the entries it holds (with the same bytes, so the
// chain holds). It owns f from now on. It fails when the journal already
// has a file, is closed, or the write fails (f is then closed).
func (j *Journal) Persist(f *os.File) error {
	j.mu.Lock()
	defer j.mu.Unlock()
	if j.f != nil || j.closed {
		f.Close()
		return errors.New("journal: already has a file, or is closed")
	}
	var b []byte
	for _, e := range j.entries {
		line, err := json.Marshal(e)
		if err != nil {
			f.Close()
			return err
		}
		b = append(append(b, line...), '\n')
	}
	if _, err := f.Write(b); err != nil {
		f.Close()
		return err
	}
	j.f = f
	return nil
}

// Append records e: it sets Seq, Prev and (when zero) Time, writes the
// line to the file, logs it, and sends it to subscribers, in the order of
// the Append calls. It returns the entry as recorded. After Close it
// records nothing and returns e unchanged.
func (j *Journal) Append(e Entry) Entry {
	j.mu.Lock()
	defer j.mu.Unlock()
	if j.closed {
		return e
	}
	if e.Time.IsZero() {
		e.Time = time.Now().UTC().Round(time.Millisecond)
	}
	e.Seq = uint64(len(j.entries))
	if e.Seq > 0 {
		e.Prev = hex.EncodeToString(j.last[:])
	}
	line, err := json.Marshal(e)
	if err != nil { // only a bad Data
		e.Data = nil
		line, _ = json.Marshal(e)
	}
	j.last = sha256.Sum256(line)
	j.entries = append(j.entries, e)
	j.writeLocked(line)
	if j.log != nil {
		logLine(j.log, e)
	}
	for ch := range j.subs {
		select {
		case ch <- e:
		default: // fell behind: cut off, it may subscribe again
			delete(j.subs, ch)
			close(ch)
		}
	}
	return e
}

func (j *Journal) writeLocked(line []byte) {
	if j.f == nil || j.fileErr != nil {
		return
	}
	if _, err := j.f.Write(append(line, '\n')); err != nil {
		j.fileErr = err
		if j.log != nil {
			j.log.Warn("cannot write the journal file; it goes on in memory only", "file", j.f.Name(), "error", err)
		}
	}
}

// Entries returns a copy of every entry so far.
func (j *Journal) Entries() []Entry {
	j.mu.Lock()
	defer j.mu.Unlock()
	return append([]Entry(nil), j.entries...)
}

// Head returns the number of entries and the hex SHA-256 of the last
// one's line (what a receipt signs), or "" when empty.
func (j *Journal) Head() (n int, hash string) {
	j.mu.Lock()
	defer j.mu.Unlock()
	if len(j.entries) == 0 {
		return 0, ""
	}
	return len(j.entries), hex.EncodeToString(j.last[:])
}

// Subscribe returns the entries so far and a channel that receives every
// later entry, in order, with nothing missed between the two. The channel
// is closed by cancel, by Close, or when the subscriber falls more than
// 256 entries behind (it may then subscribe again). cancel may be called
// more than once.
func (j *Journal) Subscribe() (past []Entry, next <-chan Entry, cancel func()) {
	j.mu.Lock()
	defer j.mu.Unlock()
	ch := make(chan Entry, subscriberBuffer)
	if j.closed {
		close(ch)
		return append([]Entry(nil), j.entries...), ch, func() {}
	}
	j.subs[ch] = struct{}{}
	return append([]Entry(nil), j.entries...), ch, func() {
		j.mu.Lock()
		defer j.mu.Unlock()
		if _, ok := j.subs[ch]; ok {
			delete(j.subs, ch)
			close(ch)
		}
	}
}

// Close ends the journal: subscribers' channels close, the file is synced
// and closed, and later Appends record nothing.
func (j *Journal) Close() error {
	j.mu.Lock()
	defer j.mu.Unlock()
	if j.closed {
		return nil
	}
	j.closed = true
	for ch := range j.subs {
		delete(j.subs, ch)
		close(ch)
	}
	if j.f == nil {
		return nil
	}
	j.f.Sync()
	return j.f.Close()
}

// ErrBroken marks a journal whose hash chain does not hold.
var ErrBroken = errors.New("journal: hash chain broken")

// Read parses a journal file (JSON lines) and checks its chain: every
// entry's Prev must be the hash of the line before and Seq must count
// from 0. It returns the entries read before the first fault, and an
// error wrapping ErrBroken at that fault.
func Read(r io.Reader) ([]Entry, error) {
	var out []Entry
	var prev string
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 4<<20)
	for n := 0; sc.Scan(); n++ {
		line := bytes.TrimRight(sc.Bytes(), "\r")
		var e Entry
		if err := json.Unmarshal(line, &e); err != nil {
			return out, fmt.Errorf("%w: line %d: %v", ErrBroken, n+1, err)
		}
		if e.Seq != uint64(n) || e.Prev != prev {
			return out, fmt.Errorf("%w: line %d (seq %d) does not follow the line before", ErrBroken, n+1, e.Seq)
		}
		sum := sha256.Sum256(line)
		prev = hex.EncodeToString(sum[:])
		out = append(out, e)
	}
	return out, sc.Err()
}
