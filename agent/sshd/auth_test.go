package sshd

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/pem"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/converge-ci/converge/internal/test/sshtest"
	gossh "golang.org/x/crypto/ssh"
)

func quietLog() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

func fingerprints(keys []authKey) []string {
	var out []string
	for _, k := range keys {
		out = append(out, gossh.FingerprintSHA256(k))
	}
	return out
}

func TestParseAuthorizedKeys(t *testing.T) {
	a, lineA := sshtest.NewKey(t, "a@laptop")
	b, lineB := sshtest.NewKey(t, "b@laptop")
	fa, fb := gossh.FingerprintSHA256(a.PublicKey()), gossh.FingerprintSHA256(b.PublicKey())
	for _, tc := range []struct {
		name    string
		in      string
		want    []string
		wantErr string
	}{
		{"empty", "", nil, ""},
		{"comments and blanks", "# keys\n\n  \n" + lineA + "\n", []string{fa}, ""},
		{"two keys, CRLF", lineA + "\r\n" + lineB + "\r\n", []string{fa, fb}, ""},
		{"bad line skipped with its number", lineA + "\nnot a key\n" + lineB, []string{fa, fb}, "test:2:"},
		{"options refused", `command="echo hi" ` + lineA + "\n" + lineB, []string{fb}, "key options (command=\"echo hi\") are not supported"},
		{"restrict refused", "restrict " + lineA, nil, "not supported"},
		{"cert-authority with principals", `cert-authority,principals="ci,ops" ` + lineA, []string{fa}, ""},
		{"an unknown option beside cert-authority refuses the line", `cert-authority,from="10.0.0.1" ` + lineA + "\n" + lineB, []string{fb}, `key options (from="10.0.0.1") are not supported`},
		{"principals without cert-authority refused", `principals="ci" ` + lineA, nil, "only with cert-authority"},
	} {
		keys, err := parseAuthorizedKeys("test", []byte(tc.in))
		got := fingerprints(keys)
		if strings.Join(got, " ") != strings.Join(tc.want, " ") {
			t.Errorf("%s: keys %v, want %v (input %q)", tc.name, got, tc.want, tc.in)
		}
		switch {
		case tc.wantErr == "" && err != nil:
			t.Errorf("%s: error %v, want none", tc.name, err)
		case tc.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tc.wantErr)):
			t.Errorf("%s: error %v, want one containing %q", tc.name, err, tc.wantErr)
		}
	}
}

// TestAuthorizedKeysReload: .authorized_keys is read afresh at each login,
// so keys added, replaced and removed take effect at once, even when the
// file keeps its size and modification time.
func TestAuthorizedKeysReload(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, ".authorized_keys")
	a, err := newAuthorizer(Config{Dir: dir, Password: "only so that New-time checks pass"}, quietLog(), func() string { return "u" })
	if err != nil {
		t.Fatal(err)
	}
	if k := a.keys(); len(k) != 0 {
		t.Fatalf("no file: %d keys, want 0", len(k))
	}
	ka, lineA := sshtest.NewKey(t, "same-length-comment-a")
	kb, lineB := sshtest.NewKey(t, "same-length-comment-b")
	write := func(content string) {
		t.Helper()
		if err := os.WriteFile(file, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		// Same mtime every time: a cache keyed on it would miss changes.
		if err := os.Chtimes(file, time.Unix(1e9, 0), time.Unix(1e9, 0)); err != nil {
			t.Fatal(err)
		}
	}
	fa, fb := gossh.FingerprintSHA256(ka.PublicKey()), gossh.FingerprintSHA256(kb.PublicKey())
	for _, step := range []struct {
		content string
		want    []string
	}{
		{lineA + "\n", []string{fa}},
		{lineB + "\n", []string{fb}}, // same size, same mtime
		{lineA + "\n" + lineB + "\n", []string{fa, fb}},
		{"# nobody\n", nil},
	} {
		write(step.content)
		if got := fingerprints(a.keys()); strings.Join(got, " ") != strings.Join(step.want, " ") {
			t.Errorf("file %q: keys %v, want %v", step.content, got, step.want)
		}
	}
	os.Remove(file)
	if k := a.keys(); len(k) != 0 {
		t.Errorf("file removed: %d keys, want 0", len(k))
	}
}

func TestNewAuthorizerSources(t *testing.T) {
	_, lineA := sshtest.NewKey(t, "a")
	_, lineB := sshtest.NewKey(t, "b")
	_, lineC := sshtest.NewKey(t, "c")
	extra := filepath.Join(t.TempDir(), "keys")
	os.WriteFile(extra, []byte(lineB+"\n"), 0o600)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, lineC+"\n")
	}))
	defer srv.Close()
	a, err := newAuthorizer(Config{Dir: t.TempDir(), AuthorizedKeys: lineA, AuthorizedKeysFiles: []string{extra}, AuthorizedKeysURLs: []string{srv.URL + "/u.keys"}}, quietLog(), func() string { return "u" })
	if err != nil {
		t.Fatal(err)
	}
	if n := len(a.keys()); n != 3 {
		t.Errorf("%d keys from data, file and URL, want 3", n)
	}

	// Nobody could log in: the error shows how to add a key.
	dir := t.TempDir()
	_, err = newAuthorizer(Config{Dir: dir}, quietLog(), func() string { return "u" })
	if err == nil || !strings.Contains(err.Error(), "nobody could log in") || !strings.Contains(err.Error(), "echo \"$(cat ~/.ssh/id_ed25519.pub)\" >> "+filepath.Join(dir, ".authorized_keys")) {
		t.Errorf("no keys: error %v, want nobody could log in with an echo >> .authorized_keys example", err)
	}
	// A password alone is a way in.
	if _, err := newAuthorizer(Config{Dir: dir, Password: "pw"}, quietLog(), func() string { return "u" }); err != nil {
		t.Errorf("password only: %v", err)
	}
	// An --authorized-keys file that does not exist is a mistake.
	_, err = newAuthorizer(Config{Dir: dir, Password: "pw", AuthorizedKeysFiles: []string{filepath.Join(dir, "nope")}}, quietLog(), func() string { return "u" })
	if err == nil || !strings.Contains(err.Error(), "--authorized-keys") {
		t.Errorf("missing file: error %v, want one naming --authorized-keys", err)
	}
	// Bad data in the environment is refused loudly.
	_, err = newAuthorizer(Config{Dir: dir, AuthorizedKeys: "garbage"}, quietLog(), func() string { return "u" })
	if err == nil || !strings.Contains(err.Error(), "--authorized-keys-data") {
		t.Errorf("bad data: error %v, want one naming --authorized-keys-data", err)
	}
}

func TestFetchAuthorizedKeys(t *testing.T) {
	_, line := sshtest.NewKey(t, "")
	block := make(chan struct{})
	defer close(block)
	mux := http.NewServeMux()
	mux.HandleFunc("/ok.keys", func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, line+"\n"+line+"\n") })
	mux.HandleFunc("/none.keys", func(w http.ResponseWriter, r *http.Request) {})
	mux.HandleFunc("/html.keys", func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "<html>login</html>") })
	mux.HandleFunc("/huge.keys", func(w http.ResponseWriter, r *http.Request) {
		w.Write([]byte(strings.Repeat(line+"\n", maxKeysSize/len(line)+10)))
	})
	mux.HandleFunc("/slow.keys", func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-r.Context().Done():
		case <-block:
		}
	})
	srv := httptest.NewServer(mux)
	defer srv.Close()

	for _, tc := range []struct {
		path    string
		keys    int
		wantErr string
	}{
		{"/ok.keys", 2, ""},
		{"/none.keys", 0, ""},
		{"/missing.keys", 0, "404 Not Found; check the user name"},
		{"/html.keys", 0, "not authorized_keys lines"},
		{"/huge.keys", 0, "more than 256 KiB"},
	} {
		keys, err := fetchAuthorizedKeys(context.Background(), srv.Client(), srv.URL+tc.path)
		if len(keys) != tc.keys || (err == nil) != (tc.wantErr == "") || (err != nil && !strings.Contains(err.Error(), tc.wantErr)) {
			t.Errorf("%s: %d keys, error %v; want %d keys, error containing %q", tc.path, len(keys), err, tc.keys, tc.wantErr)
		}
		if err != nil && !strings.Contains(err.Error(), srv.URL+tc.path) {
			t.Errorf("%s: error %q does not name the URL", tc.path, err)
		}
	}

	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if _, err := fetchAuthorizedKeys(ctx, srv.Client(), srv.URL+"/slow.keys"); err == nil || !strings.Contains(err.Error(), "no answer within") {
		t.Errorf("slow server: error %v, want no answer within", err)
	}
	for _, bad := range []string{"ftp://example.com/u.keys", "github.com/u.keys", "https://"} {
		if _, err := fetchAuthorizedKeys(context.Background(), nil, bad); err == nil || !strings.Contains(err.Error(), "give an https URL") {
			t.Errorf("%q: error %v, want give an https URL", bad, err)
		}
	}
}

func TestLoadHostKey(t *testing.T) {
	a, err := LoadHostKey("", nil)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := LoadHostKey("", nil)
	if a.PublicKey().Type() != gossh.KeyAlgoED25519 {
		t.Errorf("fresh key type %s, want ed25519", a.PublicKey().Type())
	}
	if gossh.FingerprintSHA256(a.PublicKey()) == gossh.FingerprintSHA256(b.PublicKey()) {
		t.Error("two runs got the same fresh host key")
	}

	_, priv, _ := ed25519.GenerateKey(rand.Reader)
	blk, err := gossh.MarshalPrivateKey(priv, "")
	if err != nil {
		t.Fatal(err)
	}
	pemData := pem.EncodeToMemory(blk)
	want, _ := gossh.NewSignerFromKey(priv)
	file := filepath.Join(t.TempDir(), "host_key")
	os.WriteFile(file, pemData, 0o600)
	for name, got := range map[string]func() (gossh.Signer, error){
		"PEM":  func() (gossh.Signer, error) { return LoadHostKey("", pemData) },
		"file": func() (gossh.Signer, error) { return LoadHostKey(file, nil) },
	} {
		s, err := got()
		if err != nil {
			t.Errorf("%s: %v", name, err)
			continue
		}
		if gossh.FingerprintSHA256(s.PublicKey()) != gossh.FingerprintSHA256(want.PublicKey()) {
			t.Errorf("%s: loaded a different key", name)
		}
	}
	if _, err := LoadHostKey("", []byte("-----BEGIN OPENSSH PRIVATE KEY-----\nbad\n-----END OPENSSH PRIVATE KEY-----\n")); err == nil || !strings.Contains(err.Error(), "from the environment") {
		t.Errorf("bad PEM: error %v, want one saying from the environment", err)
	}
	if _, err := LoadHostKey(filepath.Join(t.TempDir(), "none"), nil); err == nil {
		t.Error("missing host key file: no error")
	}
}

// TestDirKeysNeedNaming: .authorized_keys in the working directory (often
// the checkout, where a pull request can add a key) is read only when no
// other key source is given, or when it is named among the files.
func TestDirKeysNeedNaming(t *testing.T) {
	dir := t.TempDir()
	dk, dirLine := sshtest.NewKey(t, "committed")
	ek, explicitLine := sshtest.NewKey(t, "explicit")
	dirFile := filepath.Join(dir, ".authorized_keys")
	os.WriteFile(dirFile, []byte(dirLine+"\n"), 0o600)
	extra := filepath.Join(t.TempDir(), "keys")
	os.WriteFile(extra, []byte(explicitLine+"\n"), 0o600)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, explicitLine+"\n")
	}))
	defer srv.Close()
	fd, fe := gossh.FingerprintSHA256(dk.PublicKey()), gossh.FingerprintSHA256(ek.PublicKey())

	for _, tc := range []struct {
		name string
		cfg  Config
		want []string
	}{
		{"no other source", Config{}, []string{fd}},
		{"password only", Config{Password: "pw"}, []string{fd}},
		{"--authorized-keys", Config{AuthorizedKeysFiles: []string{extra}}, []string{fe}},
		{"--authorized-keys-data", Config{AuthorizedKeys: explicitLine}, []string{fe}},
		{"--authorized-keys-url", Config{AuthorizedKeysURLs: []string{srv.URL + "/u.keys"}}, []string{fe}},
		{"named with --authorized-keys", Config{AuthorizedKeys: explicitLine, AuthorizedKeysFiles: []string{dirFile}}, []string{fe, fd}},
	} {
		tc.cfg.Dir = dir
		var logs strings.Builder
		a, err := newAuthorizer(tc.cfg, slog.New(slog.NewTextHandler(&logs, nil)), func() string { return "u" })
		if err != nil {
			t.Errorf("%s: %v", tc.name, err)
			continue
		}
		if got := fingerprints(a.keys()); strings.Join(got, " ") != strings.Join(tc.want, " ") {
			t.Errorf("%s: keys %v, want %v", tc.name, got, tc.want)
		}
		// Every source in use is logged with its number of keys.
		if n := strings.Count(logs.String(), "msg=\"authorized keys\""); n != len(tc.want) {
			t.Errorf("%s: %d lines logging a key source, want %d:\n%s", tc.name, n, len(tc.want), logs.String())
		}
		if len(tc.want) == 1 && tc.want[0] == fe && !strings.Contains(logs.String(), "ignoring .authorized_keys in the working directory") {
			t.Errorf("%s: log does not say %s is ignored:\n%s", tc.name, dirFile, logs.String())
		}
	}
}

// TestKeysURLRule: keys come over https; plain http only from loopback
// hosts (for tests), never from a name that merely starts like one.
func TestKeysURLRule(t *testing.T) {
	for _, tc := range []struct {
		url     string
		wantErr string
	}{
		{"https://github.com/u.keys", ""},
		{"https://127.0.0.1:8443/u.keys", ""},
		{"http://127.0.0.1:8080/u.keys", ""},
		{"http://127.9.8.7/u.keys", ""},
		{"http://[::1]:8080/u.keys", ""},
		{"http://localhost:8080/u.keys", ""},
		{"http://LocalHost/u.keys", ""},
		{"http://github.com/u.keys", "plain http"},
		{"http://10.0.0.1/u.keys", "plain http"},
		{"http://0.0.0.0/u.keys", "plain http"},
		{"http://localhost.example.com/u.keys", "plain http"},
		{"http://127.0.0.1.nip.io/u.keys", "plain http"},
		{"http://[::2]/u.keys", "plain http"},
		{"ftp://github.com/u.keys", "give an https URL"},
		{"github.com/u.keys", "give an https URL"},
		{"https://", "give an https URL"},
	} {
		err := checkKeysURL(tc.url)
		if (err == nil) != (tc.wantErr == "") || (err != nil && !strings.Contains(err.Error(), tc.wantErr)) {
			t.Errorf("checkKeysURL(%q) = %v, want error containing %q", tc.url, err, tc.wantErr)
		}
	}
	// The rule holds before anything is fetched.
	if _, err := fetchAuthorizedKeys(context.Background(), nil, "http://example.com/u.keys"); err == nil || !strings.Contains(err.Error(), "use https://") {
		t.Errorf("fetch over plain http: error %v, want one saying use https://", err)
	}
}

// TestFetchRefusesDowngrade: a redirect from https to http is refused,
// even to a loopback host, with an error naming both URLs; https to https
// is followed.
func TestFetchRefusesDowngrade(t *testing.T) {
	_, line := sshtest.NewKey(t, "")
	plain := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, line+"\n")
	}))
	defer plain.Close()
	var tlsURL string
	tls := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/down.keys":
			http.Redirect(w, r, plain.URL+"/u.keys", http.StatusFound)
		case "/moved.keys":
			http.Redirect(w, r, tlsURL+"/u.keys", http.StatusMovedPermanently)
		default:
			io.WriteString(w, line+"\n")
		}
	}))
	defer tls.Close()
	tlsURL = tls.URL

	keys, err := fetchAuthorizedKeys(context.Background(), tls.Client(), tls.URL+"/down.keys")
	if err == nil || !strings.Contains(err.Error(), "from https to http") || !strings.Contains(err.Error(), plain.URL+"/u.keys") {
		t.Errorf("https redirected to http: %d keys, error %v; want a refusal naming the http URL", len(keys), err)
	}
	if keys, err := fetchAuthorizedKeys(context.Background(), tls.Client(), tls.URL+"/moved.keys"); err != nil || len(keys) != 1 {
		t.Errorf("https redirected to https: %d keys, error %v; want 1 key", len(keys), err)
	}
}
