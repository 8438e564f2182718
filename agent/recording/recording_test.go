package recording

import (
	"bufio"
	"bytes"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"filippo.io/age"
	"filippo.io/age/agessh"
	gossh "golang.org/x/crypto/ssh"
)

// decryptAll decrypts the parts of the recording name in dir, in order,
// and returns the asciicast.
func decryptAll(t *testing.T, dir, name string, id age.Identity) []byte {
	t.Helper()
	var out []byte
	for n := 0; ; n++ {
		f, err := os.Open(filepath.Join(dir, Part(name, n)))
		if os.IsNotExist(err) && n > 0 {
			return out
		}
		if err != nil {
			t.Fatal(err)
		}
		r, err := age.Decrypt(f, id)
		if err != nil {
			t.Fatalf("part %d: %v", n, err)
		}
		b, err := io.ReadAll(r)
		f.Close()
		if err != nil {
			t.Fatalf("part %d: %v", n, err)
		}
		out = append(out, b...)
	}
}

// output joins the "o" events of an asciicast, checking every line.
func output(t *testing.T, cast []byte) string {
	t.Helper()
	sc := bufio.NewScanner(bytes.NewReader(cast))
	sc.Buffer(nil, 4<<20)
	if !sc.Scan() {
		t.Fatal("empty cast")
	}
	var h struct{ Version, Width, Height int }
	if err := json.Unmarshal(sc.Bytes(), &h); err != nil || h.Version != 2 {
		t.Fatalf("header %q: %v", sc.Text(), err)
	}
	var b strings.Builder
	for sc.Scan() {
		var ev []any
		if err := json.Unmarshal(sc.Bytes(), &ev); err != nil || len(ev) != 3 {
			t.Fatalf("event %q: %v", sc.Text(), err)
		}
		if ev[1] == "o" {
			b.WriteString(ev[2].(string))
		}
	}
	return b.String()
}

func TestCastPartsDecryptToOneCast(t *testing.T) {
	x, err := age.GenerateX25519Identity()
	if err != nil {
		t.Fatal(err)
	}
	pub, priv, _ := ed25519.GenerateKey(rand.Reader)
	sshPub, _ := gossh.NewPublicKey(pub)
	sshID, err := agessh.NewEd25519Identity(priv)
	if err != nil {
		t.Fatal(err)
	}
	other, _ := age.GenerateX25519Identity()
	lines := x.Recipient().String() + "\n" + string(gossh.MarshalAuthorizedKey(sshPub))
	rs, _, err := ParseRecipients("test", []byte(lines))
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	r, err := New(Config{Dir: dir, Recipients: rs, PartSize: 4096, FlushEvery: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	sums := map[string]string{}
	c, err := r.Start("s1", Header{Width: 100, Height: 30, Term: "xterm"}, func(file, sum string) {
		if _, dup := sums[file]; dup {
			t.Errorf("%s sealed twice", file)
		}
		sums[file] = sum
	})
	if err != nil {
		t.Fatal(err)
	}
	var want strings.Builder
	for i := 0; i < 500; i++ {
		line := []byte("line " + strings.Repeat("é", i%7) + " <&> \x1b[1m\r\n")
		// Cut in the middle of a multi-byte character now and then.
		cut := len(line) / 2
		c.Output(line[:cut])
		c.Output(line[cut:])
		want.Write(line)
	}
	c.Resize(120, 40)
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(dir, Part("s1", 2))); err != nil {
		t.Fatalf("want several parts: %v", err)
	}
	// Every part was reported sealed once, with its file's hash.
	files, _ := filepath.Glob(filepath.Join(dir, "*.cast.age"))
	if len(sums) != len(files) {
		t.Errorf("%d parts sealed, %d on disk", len(sums), len(files))
	}
	for _, f := range files {
		b, _ := os.ReadFile(f)
		if h := sha256.Sum256(b); sums[filepath.Base(f)] != hex.EncodeToString(h[:]) {
			t.Errorf("%s: sealed hash %q is not the file's", f, sums[filepath.Base(f)])
		}
	}
	for _, id := range []age.Identity{x, sshID} {
		if got := output(t, decryptAll(t, dir, "s1", id)); got != want.String() {
			t.Fatalf("decrypted output differs: got %d bytes, want %d", len(got), want.Len())
		}
	}
	f, _ := os.Open(filepath.Join(dir, Part("s1", 0)))
	defer f.Close()
	if _, err := age.Decrypt(f, other); err == nil {
		t.Fatal("a key that is not a recipient decrypted the recording")
	}
}

// TestCastFlushesOpenPart: what was printed is on disk, decryptable,
// after a flush, while the shell still runs.
func TestCastFlushesOpenPart(t *testing.T) {
	x, _ := age.GenerateX25519Identity()
	dir := t.TempDir()
	r, err := New(Config{Dir: dir, Recipients: []age.Recipient{x.Recipient()}, FlushEvery: 10 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	c, err := r.Start("s2", Header{}, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.Output([]byte("MARK-ONE\r\n"))
	for c.Written() < int64(len("MARK-ONE")) {
		time.Sleep(5 * time.Millisecond) // waits for the writer, asserts nothing on time
	}
	if got := output(t, decryptAll(t, dir, "s2", x)); got != "MARK-ONE\r\n" {
		t.Fatalf("open part holds %q", got)
	}
	raw, _ := os.ReadFile(filepath.Join(dir, Part("s2", 0)))
	if bytes.Contains(raw, []byte("MARK-ONE")) {
		t.Fatal("plaintext in the file")
	}
}

func TestCompleteUTF8(t *testing.T) {
	for _, tc := range []struct{ in, text, rest string }{
		{"abc", "abc", ""},
		{"ab\xc3", "ab", "\xc3"},
		{"ab\xc3\xa9", "ab\xc3\xa9", ""},
		{"\xe2\x82", "", "\xe2\x82"},
		{"a\xff", "a\xff", ""},
	} {
		text, rest := completeUTF8([]byte(tc.in))
		if string(text) != tc.text || string(rest) != tc.rest {
			t.Errorf("completeUTF8(%q) = %q, %q; want %q, %q", tc.in, text, rest, tc.text, tc.rest)
		}
	}
}

func TestParseRecipients(t *testing.T) {
	_, _, err := ParseRecipients("x", []byte("# nothing\n\n"))
	if err == nil {
		t.Fatal("no recipients accepted")
	}
	_, _, err = ParseRecipients("x", []byte("not a key\n"))
	if err == nil || !strings.Contains(err.Error(), "x:1") {
		t.Fatalf("bad line: %v", err)
	}
}

// TestCastInputOnlyWhenAsked: typed input is an "i" event only with
// Config.Input.
func TestCastInputOnlyWhenAsked(t *testing.T) {
	x, _ := age.GenerateX25519Identity()
	for _, input := range []bool{false, true} {
		dir := t.TempDir()
		r, err := New(Config{Dir: dir, Recipients: []age.Recipient{x.Recipient()}, Input: input})
		if err != nil {
			t.Fatal(err)
		}
		c, err := r.Start("s", Header{}, nil)
		if err != nil {
			t.Fatal(err)
		}
		c.Input([]byte("secret-typed"))
		c.Output([]byte("shown"))
		if err := c.Close(); err != nil {
			t.Fatal(err)
		}
		cast := string(decryptAll(t, dir, "s", x))
		if got := strings.Contains(cast, `"i", "secret-typed"`); got != input {
			t.Errorf("Input %v: cast holds the typed input: %v\n%s", input, got, cast)
		}
		if !strings.Contains(cast, `"o", "shown"`) {
			t.Errorf("Input %v: no output event:\n%s", input, cast)
		}
	}
}
