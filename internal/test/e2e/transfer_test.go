package e2e

import (
	"encoding/base64"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/converge-ci/converge/internal/test/sshtest"
)

// TestConvergeGetAndCopyInSSH: in an OpenSSH session, `converge get`
// cannot save a file on the user's machine, so it prints the scp line
// that does; that line, run as printed (its ProxyCommand, alias, user and
// path), fetches the file byte for byte. `converge copy` puts a file's
// text on the terminal's clipboard with OSC 52. (The browser side of
// `converge get` is TestTerminalDownload.)
func TestConvergeGetAndCopyInSSH(t *testing.T) {
	t.Parallel()
	r := startServer(t)
	c := sshtest.New(t)
	dir := keyDir(t, c)
	content := "report line 1\nline 2 with 'quotes' and spaces\n"
	if err := os.WriteFile(filepath.Join(dir, "my report.txt"), []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
	p := runAgentBinary(t, r, dir, nil, "--id", "get-job", "--stay", "--state-dir", t.TempDir())
	_, line := printedTrust(t, p.Out.String())
	addKnownHost(t, c, line)
	tgt := r.target("get-job")

	got := c.SSH(tgt, 0, "converge get 'my report.txt'")
	m := regexp.MustCompile(`scp -oProxyCommand="wsproxy (\S+)" -oHostKeyAlias=(\S+) (\S+)@localhost:('[^']*'|\S+) \.`).FindStringSubmatch(got.Stdout)
	if m == nil {
		t.Fatalf("converge get in an ssh session printed no scp line:\n%s%s", got.Stdout, got.Stderr)
	}
	if m[1] != r.URL+"/client/get-job" || m[2] != "get-job" || m[3] != r.User {
		t.Errorf("scp line names %q, alias %q, user %q; want %q, get-job, %q", m[1], m[2], m[3], r.URL+"/client/get-job", r.User)
	}
	path := strings.Trim(m[4], "'")
	local := t.TempDir()
	scp := sshtest.Target{User: m[3], Alias: m[2], ProxyCommand: bin("wsproxy") + " " + m[1]}
	if res := c.Run("scp", scp, "", scp.Dest()+":"+path, local+"/"); res.Code != 0 {
		t.Fatalf("the printed scp line failed: %d\n%s", res.Code, res.Stderr)
	}
	if b, err := os.ReadFile(filepath.Join(local, "my report.txt")); err != nil || string(b) != content {
		t.Errorf("fetched %q, %v; want %q", b, err, content)
	}

	if res := c.SSH(tgt, 1, "converge get no-such-file"); !strings.Contains(res.Stderr+res.Stdout, "no-such-file") {
		t.Errorf("converge get of a missing file: %q %q", res.Stdout, res.Stderr)
	}
	copied := c.SSH(tgt, 0, "converge copy 'my report.txt'")
	if want := "\x1b]52;c;" + base64.StdEncoding.EncodeToString([]byte(content)) + "\a"; !strings.Contains(copied.Stdout, want) {
		t.Errorf("converge copy printed %q, want the OSC 52 sequence %q", copied.Stdout, want)
	}
}
