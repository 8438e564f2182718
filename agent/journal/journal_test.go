package journal

import (
	"bytes"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestChainAndRead(t *testing.T) {
	path := filepath.Join(t.TempDir(), "journal.jsonl")
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	j := Open(f, nil)
	j.Append(Entry{Kind: KindStart, Note: "id=x"})
	j.Append(Entry{Kind: KindLogin, Conn: "c1", Login: &Login{User: "u", Method: "publickey", Fingerprint: "SHA256:a", Comment: "alice@laptop"}})
	j.Append(Entry{Kind: KindSessionStart, Conn: "c1", Session: &Session{ID: "s1", Kind: "shell"}})
	n, head := j.Head()
	if err := j.Close(); err != nil {
		t.Fatal(err)
	}
	if j.Append(Entry{Kind: KindEnd}).Seq != 0 || len(j.Entries()) != 3 {
		t.Errorf("Append after Close recorded an entry")
	}
	data, _ := os.ReadFile(path)
	entries, err := Read(bytes.NewReader(data))
	if err != nil || len(entries) != 3 || n != 3 || head == "" {
		t.Fatalf("Read: %d entries, err %v (Head %d %q)", len(entries), err, n, head)
	}
	if entries[1].Login.Comment != "alice@laptop" || entries[2].Prev == "" || entries[0].Prev != "" {
		t.Errorf("entries read back: %+v", entries)
	}
	// Changing one byte of an earlier line breaks the next link.
	tampered := strings.Replace(string(data), "alice@laptop", "mallory@evil", 1)
	got, err := Read(strings.NewReader(tampered))
	if !errors.Is(err, ErrBroken) || len(got) != 2 {
		t.Errorf("tampered journal: %d entries, err %v; want 2 and ErrBroken", len(got), err)
	}
	// Dropping a line breaks it too.
	lines := strings.SplitAfter(string(data), "\n")
	if _, err := Read(strings.NewReader(lines[0] + lines[2])); !errors.Is(err, ErrBroken) {
		t.Errorf("journal without its second line: err %v, want ErrBroken", err)
	}
}

func TestSubscribe(t *testing.T) {
	j := New(nil)
	j.Append(Entry{Kind: KindStart})
	past, next, cancel := j.Subscribe()
	if len(past) != 1 {
		t.Fatalf("past %d entries, want 1", len(past))
	}
	j.Append(Entry{Kind: KindLogin, Conn: "c", Login: &Login{User: "u"}})
	if e := <-next; e.Seq != 1 || e.Kind != KindLogin {
		t.Errorf("next entry %+v, want seq 1 login", e)
	}
	cancel()
	cancel()
	if _, ok := <-next; ok {
		t.Error("channel open after cancel")
	}
	// A subscriber that falls behind is cut off, never blocks Append.
	_, slow, cancel2 := j.Subscribe()
	defer cancel2()
	for i := 0; i < subscriberBuffer+10; i++ {
		j.Append(Entry{Kind: KindRunDecision})
	}
	n := 0
	for range slow {
		n++
	}
	if n != subscriberBuffer {
		t.Errorf("slow subscriber got %d entries before its channel closed, want %d", n, subscriberBuffer)
	}
}

func TestPeople(t *testing.T) {
	j := New(nil)
	j.Append(Entry{Kind: KindLogin, Conn: "a", Login: &Login{Comment: "alice@laptop"}})
	j.Append(Entry{Kind: KindLogin, Conn: "b", Login: &Login{Fingerprint: "SHA256:b"}})
	j.Append(Entry{Kind: KindSessionStart, Conn: "a", Session: &Session{ID: "s1", Kind: "shell"}})
	j.Append(Entry{Kind: KindSessionStart, Conn: "a", Session: &Session{ID: "s2", Kind: "exec", Command: "make"}})
	j.Append(Entry{Kind: KindSessionEnd, Conn: "a", Session: &Session{ID: "s1", Kind: "shell"}})
	j.Append(Entry{Kind: KindLogout, Conn: "b"})
	p := People(j.Entries())
	if len(p) != 2 || p[0].Login.Name() != "alice@laptop" || len(p[0].Sessions) != 1 || p[0].Sessions[0].ID != "s2" || p[0].Count != 2 {
		t.Errorf("alice: %+v", p)
	}
	if p[1].Until.IsZero() || p[1].Login.Name() != "SHA256:b" {
		t.Errorf("b logged out but %+v", p[1])
	}
}

func TestName(t *testing.T) {
	for _, tc := range []struct {
		l    Login
		want string
	}{
		{Login{Comment: "alice@laptop", Source: "https://github.com/x.keys", Fingerprint: "SHA256:a"}, "alice@laptop"},
		{Login{CertKeyID: "alice-2026", Fingerprint: "SHA256:a"}, "alice-2026"},
		{Login{Source: "https://github.com/alice.keys", Fingerprint: "SHA256:a"}, "alice via github.com/alice.keys"},
		{Login{Source: "/home/ci/.authorized_keys", Fingerprint: "SHA256:a"}, "SHA256:a"},
		{Login{Method: "password"}, "password"},
	} {
		if got := tc.l.Name(); got != tc.want {
			t.Errorf("Name of %+v = %q, want %q", tc.l, got, tc.want)
		}
	}
}

func TestPersistKeepsTheChain(t *testing.T) {
	j := New(nil)
	j.Append(Entry{Kind: KindStart, Data: []byte(`{ "spaced": true }`)})
	j.Append(Entry{Kind: KindLogin, Conn: "c", Login: &Login{User: "u"}})
	path := filepath.Join(t.TempDir(), "j")
	f, _ := os.Create(path)
	if err := j.Persist(f); err != nil {
		t.Fatal(err)
	}
	j.Append(Entry{Kind: KindLogout, Conn: "c"})
	j.Close()
	data, _ := os.ReadFile(path)
	got, err := Read(bytes.NewReader(data))
	if err != nil || len(got) != 3 {
		t.Errorf("journal persisted late: %d entries, %v\n%s", len(got), err, data)
	}
}

// FuzzRead: any bytes, read as a journal, give entries or an error, never
// a panic; what Read accepts, it accepts again from the same lines.
func FuzzRead(f *testing.F) {
	j := New(nil)
	j.Append(Entry{Kind: KindStart})
	j.Append(Entry{Kind: KindLogin, Conn: "c", Login: &Login{User: "u", Comment: "a@b"}})
	var b bytes.Buffer
	for _, e := range j.Entries() {
		line, _ := json.Marshal(e)
		b.Write(append(line, '\n'))
	}
	f.Add(b.Bytes())
	f.Add([]byte("{}\n"))
	f.Add([]byte(`{"seq":0,"prev":""}` + "\n" + `{"seq":1,"prev":"00"}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		entries, err := Read(bytes.NewReader(data))
		if err == nil {
			for i, e := range entries {
				if e.Seq != uint64(i) {
					t.Fatalf("entry %d has seq %d", i, e.Seq)
				}
			}
		}
	})
}
