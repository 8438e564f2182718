package server

import (
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"html"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"testing/fstest"
	"time"
)

// serve runs one request through s's handler, from remote (IP:port).
func serve(s *Server, method, target, remote string, hdr http.Header) *httptest.ResponseRecorder {
	r := httptest.NewRequest(method, target, nil)
	r.RemoteAddr = remote
	for k, v := range hdr {
		r.Header[k] = v
	}
	w := httptest.NewRecorder()
	s.Handler().ServeHTTP(w, r)
	return w
}

// recipe is the text of the <pre id=id> block of a page.
func recipe(t *testing.T, page, id string) string {
	t.Helper()
	m := regexp.MustCompile(`(?s)<pre id="` + regexp.QuoteMeta(id) + `"><code>(.*?)</code></pre>`).FindStringSubmatch(page)
	if m == nil {
		t.Fatalf("page has no recipe %q", id)
	}
	return html.UnescapeString(m[1])
}

func TestUsagePageFillsInThisServer(t *testing.T) {
	s := newTestServer(t)
	w := serve(s, "GET", "http://relay.test:8443/?id=job-42", "192.0.2.7:5555", nil)
	if w.Code != 200 {
		t.Fatalf("GET / = %d\n%s", w.Code, w.Body)
	}
	page := w.Body.String()
	for id, want := range map[string][]string{
		"ci-linux":           {"curl -fsSL --create-dirs -o .converge/agent http://relay.test:8443/static/agent\n", "chmod +x .converge/agent\n", "\n.converge/agent --id job-42 ws://relay.test:8443"},
		"ci-macos":           {"-o .converge/agent http://relay.test:8443/static/dist/agent-darwin-$arch", "\n.converge/agent --id job-42 ws://relay.test:8443"},
		"ci-windows":         {"curl.exe -fsSL --create-dirs -o .converge/agent.exe http://relay.test:8443/static/agent.exe", `.converge\agent.exe --id job-42 ws://relay.test:8443`},
		"ssh-cmd":            {`ssh -oProxyCommand="wsproxy ws://relay.test:8443/client/job-42" -oHostKeyAlias=job-42 ciuser@localhost`},
		"sftp-cmd":           {`sftp -oProxyCommand="wsproxy ws://relay.test:8443/client/job-42" -oHostKeyAlias=job-42 ciuser@localhost`, "\nscp -oProxyCommand="},
		"tcptows-cmd":        {"tcptows 10000 ws://relay.test:8443/client/job-42", "ssh -p 10000 -oHostKeyAlias=job-42 ciuser@localhost"},
		"ssh-config-snippet": {"Host job-42\n", "User ciuser\n", "ProxyCommand wsproxy ws://relay.test:8443/client/%n\n", "HostKeyAlias job-42"},
		"known-hosts":        {"echo 'job-42 ssh-ed25519 "},
		"hold-cmd":           {`touch "$agentdir/.hold"`},
	} {
		got := recipe(t, page, id)
		for _, w := range want {
			if !strings.Contains(got, w) {
				t.Errorf("recipe %s = %q\nwant it to contain %q", id, got, w)
			}
		}
	}
	if !strings.Contains(page, "built without the downloadable binaries") {
		t.Error("page does not say the downloads are missing from this build")
	}
	// Nobody logging in exits 0 by default (--no-login-status), as the
	// agent's --help and the README say.
	if strings.Contains(page, "status 3") {
		t.Error("page says an agent nobody logged in to exits with status 3; it exits 0 unless --no-login-status says otherwise")
	}
}

func TestUsagePageRefusesBadIDs(t *testing.T) {
	s := newTestServer(t)
	for _, id := range []string{"", "a;rm -rf", "<script>", ".hidden", strings.Repeat("x", 65)} {
		page := serve(s, "GET", "http://relay.test/?id="+url.QueryEscape(id), "192.0.2.7:5555", nil).Body.String()
		got := recipe(t, page, "ssh-cmd")
		m := regexp.MustCompile(`-oHostKeyAlias=(\S+) `).FindStringSubmatch(got)
		if m == nil || !regexp.MustCompile(`^[a-z2-9]{4}-[a-z2-9]{4}-[a-z2-9]{4}$`).MatchString(m[1]) {
			t.Errorf("?id=%q: recipe %q, want a fresh random ID in place of the bad one", id, got)
		}
	}
}

func TestForwardedHeadersOnlyFromTrustedProxies(t *testing.T) {
	s := newTestServer(t, func(c *Config) { c.TrustedProxies = []string{"10.0.0.0/8", "2001:db8::1"} })
	fwd := http.Header{
		"X-Forwarded-Proto": {"https"},
		"X-Forwarded-Host":  {"converge.example.com"},
		"X-Forwarded-For":   {"198.51.100.9, 10.1.2.3"},
	}
	for _, tc := range []struct {
		remote           string
		wantBase, wantWS string
	}{
		{"10.9.8.7:4000", "https://converge.example.com", "wss://converge.example.com"},
		{"[2001:db8::1]:4000", "https://converge.example.com", "wss://converge.example.com"},
		{"[::ffff:10.0.0.1]:4000", "https://converge.example.com", "wss://converge.example.com"},
		{"192.0.2.7:4000", "http://internal:8000", "ws://internal:8000"},     // not a proxy: forged headers ignored
		{"[2001:db8::2]:4000", "http://internal:8000", "ws://internal:8000"}, // a neighbour of the proxy
	} {
		page := serve(s, "GET", "http://internal:8000/?id=abc", tc.remote, fwd).Body.String()
		got := recipe(t, page, "ci-linux")
		if !strings.Contains(got, tc.wantBase+"/static/agent") || !strings.Contains(got, "--id abc "+tc.wantWS) {
			t.Errorf("from %s: recipe %q, want base %s and %s", tc.remote, got, tc.wantBase, tc.wantWS)
		}
	}
	// A trusted proxy still cannot inject markup or shell through the host.
	bad := http.Header{"X-Forwarded-Host": {`evil"; rm -rf ~; echo "`}}
	if got := recipe(t, serve(s, "GET", "http://internal:8000/?id=abc", "10.0.0.1:1", bad).Body.String(), "ci-linux"); !strings.Contains(got, "http://internal:8000/static/agent") {
		t.Errorf("malformed X-Forwarded-Host was used: %q", got)
	}
}

func TestRemoteAddrBehindProxies(t *testing.T) {
	s := newTestServer(t, func(c *Config) { c.TrustedProxies = []string{"10.0.0.0/8", "192.0.2.1"} })
	for _, tc := range []struct {
		remote, xff, want string
	}{
		{"198.51.100.1:1", "203.0.113.5", "198.51.100.1"},                // untrusted peer: header ignored
		{"10.0.0.1:1", "203.0.113.5", "203.0.113.5"},                     // one proxy
		{"10.0.0.1:1", "6.6.6.6, 203.0.113.5, 192.0.2.1", "203.0.113.5"}, // chain: the client forged the first hop
		{"10.0.0.1:1", "", "10.0.0.1"},                                   // no header: the proxy itself
		{"10.0.0.1:1", "garbage, 10.0.0.2", "10.0.0.2"},                  // stop at what can be vouched for
	} {
		r := httptest.NewRequest("GET", "/", nil)
		r.RemoteAddr = tc.remote
		if tc.xff != "" {
			r.Header.Set("X-Forwarded-For", tc.xff)
		}
		if got := s.remoteAddr(r); got != tc.want {
			t.Errorf("remoteAddr(peer %s, X-Forwarded-For %q) = %s, want %s", tc.remote, tc.xff, got, tc.want)
		}
	}
}

func TestConfigRejectsBadFrontSettings(t *testing.T) {
	for _, tc := range []struct {
		name string
		cfg  Config
		want string
	}{
		{"cert without key", Config{TLSCertFile: "c.pem"}, "--tls-key"},
		{"key without cert", Config{TLSKeyFile: "k.pem"}, "--tls-cert"},
		{"bad proxy", Config{TrustedProxies: []string{"10.0.0.0/33"}}, "CIDR"},
		{"missing cert file", Config{TLSCertFile: "/nonexistent/c.pem", TLSKeyFile: "/nonexistent/k.pem"}, "load TLS certificate"},
	} {
		_, err := New(tc.cfg)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: New = %v, want an error mentioning %q", tc.name, err, tc.want)
		}
	}
}

// TestTLS serves https and wss itself: the page says so.
func TestTLS(t *testing.T) {
	certFile, keyFile, pool := selfSigned(t)
	r := runServer(t, func(c *Config) { c.TLSCertFile, c.TLSKeyFile = certFile, keyFile })
	client := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}}
	defer client.CloseIdleConnections()
	resp, err := client.Get("https://" + r.addr + "/?id=tls1")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	got := recipe(t, string(b), "ci-linux")
	if !strings.Contains(got, "https://"+r.addr+"/static/agent") || !strings.Contains(got, "wss://"+r.addr) {
		t.Errorf("over TLS the recipe is %q, want https:// and wss:// with %s", got, r.addr)
	}
	// Plain HTTP on the TLS port is refused.
	if resp, err := http.Get("http://" + r.addr + "/"); err == nil {
		resp.Body.Close()
		if resp.StatusCode == 200 {
			t.Error("plain HTTP request to the TLS port succeeded")
		}
	}
}

// selfSigned writes a certificate for 127.0.0.1 and its key.
func selfSigned(t *testing.T) (certFile, keyFile string, pool *x509.CertPool) {
	t.Helper()
	dir := t.TempDir()
	certFile, keyFile = filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	cert := writePair(t, certFile, keyFile, 1, time.Now())
	pool = x509.NewCertPool()
	pool.AddCert(cert)
	return certFile, keyFile, pool
}

// fakeBinaries are executables by their first bytes only.
var fakeBinaries = fstest.MapFS{
	"agent-linux-amd64":       {Data: []byte("\x7fELF linux agent")},
	"agent-darwin-arm64":      {Data: []byte("\xcf\xfa\xed\xfe darwin agent")},
	"agent-windows-amd64.exe": {Data: []byte("MZ windows agent")},
	"tcptows-linux-arm64":     {Data: []byte("\x7fELF tcptows arm64")},
	"README.txt":              {Data: []byte("placeholder")},
}

func sum(b []byte) string { s := sha256.Sum256(b); return hex.EncodeToString(s[:]) }

func TestDownloads(t *testing.T) {
	s := newTestServer(t, func(c *Config) { c.Dist = fakeBinaries })
	page := serve(s, "GET", "http://relay.test/downloads", "192.0.2.7:1", nil).Body.String()
	rows := regexp.MustCompile(`(?s)<tr data-name="([^"]+)">(.*?)</tr>`).FindAllStringSubmatch(page, -1)
	got := map[string]string{}
	for _, r := range rows {
		got[r[1]] = r[2]
	}
	if len(got) != 4 {
		t.Errorf("downloads table has %d rows (%v), want 4", len(got), got)
	}
	for name, f := range fakeBinaries {
		if name == "README.txt" {
			continue
		}
		row, ok := got[name]
		if !ok {
			t.Errorf("no row for %s", name)
			continue
		}
		if !strings.Contains(row, sum(f.Data)) {
			t.Errorf("row for %s lacks its SHA-256 %s:\n%s", name, sum(f.Data), row)
		}
		if !strings.Contains(row, `href="http://relay.test/static/dist/`+name+`"`) {
			t.Errorf("row for %s lacks its link:\n%s", name, row)
		}
	}
	if !strings.Contains(page, "Not included in this build:") || !strings.Contains(page, "wsproxy-darwin-amd64") {
		t.Error("page does not list what the build lacks")
	}

	for _, tc := range []struct {
		path string
		want []byte // nil: refused with a message
		msg  string
	}{
		{"/static/agent", fakeBinaries["agent-linux-amd64"].Data, ""},
		{"/static/agent.exe", fakeBinaries["agent-windows-amd64.exe"].Data, ""},
		{"/static/dist/agent-darwin-arm64", fakeBinaries["agent-darwin-arm64"].Data, ""},
		{"/static/dist/tcptows-linux-arm64", fakeBinaries["tcptows-linux-arm64"].Data, ""},
		{"/static/wsproxy", nil, "not among this server's downloads"},
		{"/static/dist/README.txt", nil, "not among"},
		{"/static/dist/..%2fstatic.go", nil, ""},
	} {
		w := serve(s, "GET", tc.path, "192.0.2.7:1", nil)
		if tc.want == nil {
			if w.Code == 200 || !strings.Contains(w.Body.String(), tc.msg) {
				t.Errorf("GET %s = %d %q, want a refusal saying %q", tc.path, w.Code, w.Body, tc.msg)
			}
			continue
		}
		if w.Code != 200 || w.Body.String() != string(tc.want) {
			t.Errorf("GET %s = %d %q, want %q", tc.path, w.Code, w.Body, tc.want)
		}
		if ct := w.Header().Get("Content-Type"); ct != "application/octet-stream" {
			t.Errorf("GET %s: Content-Type %q", tc.path, ct)
		}
	}
}

// TestUsageRecipesCheckSums: the page's download recipes check the file
// against the sum this server lists, and that check fails on any other
// file; the page says these sums do not vouch for the server itself.
func TestUsageRecipesCheckSums(t *testing.T) {
	s := newTestServer(t, func(c *Config) { c.Dist = fakeBinaries })
	page := serve(s, "GET", "http://relay.test/?id=job-42", "192.0.2.7:1", nil).Body.String()
	linux := recipe(t, page, "ci-linux")
	check := regexp.MustCompile(`(?m)^echo '[0-9a-f]{64}  \.converge/agent' \| sha256sum -c.*$`).FindString(linux)
	if !strings.Contains(check, sum(fakeBinaries["agent-linux-amd64"].Data)) {
		t.Fatalf("the Linux recipe does not check the agent's sum:\n%s", linux)
	}
	for _, tc := range []struct {
		content string
		ok      bool
	}{
		{string(fakeBinaries["agent-linux-amd64"].Data), true},
		{"\x7fELF another program", false},
	} {
		dir := t.TempDir()
		if err := os.MkdirAll(filepath.Join(dir, ".converge"), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, ".converge", "agent"), []byte(tc.content), 0o644); err != nil {
			t.Fatal(err)
		}
		cmd := exec.Command("sh", "-c", check)
		cmd.Dir = dir
		out, err := cmd.CombinedOutput()
		if (err == nil) != tc.ok {
			t.Errorf("%q with agent %q: %v, want ok=%v\n%s", check, tc.content, err, tc.ok, out)
		}
	}
	if w := recipe(t, page, "ci-windows"); !strings.Contains(w, sum(fakeBinaries["agent-windows-amd64.exe"].Data)) {
		t.Errorf("the Windows recipe does not check the agent's sum:\n%s", w)
	}
	if m := recipe(t, page, "ci-macos"); !strings.Contains(m, sum(fakeBinaries["agent-darwin-arm64"].Data)) || !strings.Contains(m, "shasum -a 256 -c") {
		t.Errorf("the macOS recipe does not check the agent's sum:\n%s", m)
	}
	if !strings.Contains(page, "a server chooses the code it serves") {
		t.Error("the page does not say its sums cannot vouch for the server")
	}
}

func TestDownloadsAbsent(t *testing.T) {
	s := newTestServer(t, func(c *Config) { c.Dist = fstest.MapFS{"README.txt": {Data: []byte("placeholder")}} })
	page := serve(s, "GET", "/downloads", "192.0.2.7:1", nil).Body.String()
	if !strings.Contains(page, `id="no-downloads"`) || strings.Contains(page, `id="downloads"`) {
		t.Errorf("downloads page of a build without binaries:\n%s", page)
	}
	for _, p := range []string{"/static/agent", "/static/tcptows.exe", "/static/dist/wsproxy-darwin-arm64"} {
		w := serve(s, "GET", p, "192.0.2.7:1", nil)
		if w.Code != http.StatusNotFound || !strings.Contains(w.Body.String(), "built without the downloadable binaries") || !strings.Contains(w.Body.String(), "make dist") {
			t.Errorf("GET %s = %d %q, want 404 saying the build has no binaries and how to get them", p, w.Code, w.Body)
		}
	}
}

func TestDownloadOfWrongKindIsRefusedAtStart(t *testing.T) {
	_, err := New(Config{Dist: fstest.MapFS{"agent-windows-amd64.exe": {Data: []byte("\x7fELF")}}})
	if err == nil || !strings.Contains(err.Error(), "not a PE executable") {
		t.Errorf("New with an ELF file named .exe = %v, want a refusal", err)
	}
}

func TestAssets(t *testing.T) {
	s := newTestServer(t)
	for path, ct := range map[string]string{"/static/style.css": "text/css", "/static/sessions.js": "javascript", "/static/icon.svg": "image/svg+xml"} {
		w := serve(s, "GET", path, "192.0.2.7:1", nil)
		if w.Code != 200 || !strings.Contains(w.Header().Get("Content-Type"), ct) || w.Body.Len() == 0 {
			t.Errorf("GET %s = %d %s (%d bytes)", path, w.Code, w.Header().Get("Content-Type"), w.Body.Len())
		}
	}
	if w := serve(s, "GET", "/static/nothing.css", "192.0.2.7:1", nil); w.Code != 404 {
		t.Errorf("GET /static/nothing.css = %d, want 404", w.Code)
	}
}
