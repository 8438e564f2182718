package wsproxy

import (
	"crypto/tls"
	"encoding/json"
	"os"
	"path/filepath"
	"sync"
	"time"
)

// maxSessions bounds the servers a session file remembers; the least
// recently stored go first.
const maxSessions = 32

// SessionFile is a tls.ClientSessionCache kept in a file, so that the
// next wsproxy run to a wss:// server resumes the TLS session of the
// last one (a ticket the server issued) instead of a full handshake. It
// is keyed by server name, holds at most maxSessions servers, and is
// written 0600 (a ticket and its secret let whoever holds them resume the
// session, not read past traffic). A file that cannot be read or written
// only costs a full handshake: errors are ignored. Concurrent runs may
// overwrite each other's latest ticket; each still resumes with one.
type SessionFile struct {
	path string
	mu   sync.Mutex
}

// NewSessionFile keeps TLS sessions in the file at path, creating its
// directory (0700) when it stores the first.
func NewSessionFile(path string) *SessionFile { return &SessionFile{path: path} }

// DefaultSessionFile is where wsproxy keeps TLS sessions: converge/
// tls-sessions.json under the user's cache directory ("" when there is
// none).
func DefaultSessionFile() string {
	dir, err := os.UserCacheDir()
	if err != nil {
		return ""
	}
	return filepath.Join(dir, "converge", "tls-sessions.json")
}

// storedSession is one server's session in the file.
type storedSession struct {
	Ticket []byte    `json:"ticket"`
	State  []byte    `json:"state"` // tls.SessionState.Bytes
	Stored time.Time `json:"stored"`
}

func (f *SessionFile) load() map[string]storedSession {
	m := map[string]storedSession{}
	if b, err := os.ReadFile(f.path); err == nil {
		json.Unmarshal(b, &m) // a damaged file is an empty one
	}
	return m
}

// Get returns the session stored for key, if any.
func (f *SessionFile) Get(key string) (*tls.ClientSessionState, bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	s, ok := f.load()[key]
	if !ok {
		return nil, false
	}
	state, err := tls.ParseSessionState(s.State)
	if err != nil {
		return nil, false
	}
	cs, err := tls.NewResumptionState(s.Ticket, state)
	if err != nil {
		return nil, false
	}
	return cs, true
}

// Put stores cs for key, or forgets key when cs is nil.
func (f *SessionFile) Put(key string, cs *tls.ClientSessionState) {
	f.mu.Lock()
	defer f.mu.Unlock()
	m := f.load()
	if cs == nil {
		if _, ok := m[key]; !ok {
			return
		}
		delete(m, key)
	} else {
		ticket, state, err := cs.ResumptionState()
		if err != nil || state == nil {
			return
		}
		b, err := state.Bytes()
		if err != nil {
			return
		}
		m[key] = storedSession{Ticket: ticket, State: b, Stored: time.Now()}
		for len(m) > maxSessions {
			oldest := ""
			for k, s := range m {
				if oldest == "" || s.Stored.Before(m[oldest].Stored) {
					oldest = k
				}
			}
			delete(m, oldest)
		}
	}
	f.save(m)
}

// save writes m to the file through a temporary file and a rename, so a
// reader never sees half of it.
func (f *SessionFile) save(m map[string]storedSession) {
	b, err := json.Marshal(m)
	if err != nil {
		return
	}
	if err := os.MkdirAll(filepath.Dir(f.path), 0o700); err != nil {
		return
	}
	tmp, err := os.CreateTemp(filepath.Dir(f.path), ".tls-sessions-*")
	if err != nil {
		return
	}
	defer os.Remove(tmp.Name()) // after the rename, nothing there
	if _, err := tmp.Write(b); err != nil || tmp.Chmod(0o600) != nil || tmp.Close() != nil {
		tmp.Close()
		return
	}
	os.Rename(tmp.Name(), f.path)
}
