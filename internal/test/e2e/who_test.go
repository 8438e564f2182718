package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"

	"github.com/converge-ci/converge/agent/journal"
	"github.com/converge-ci/converge/internal/test/sshtest"
)

// withComment is c's authorized_keys line with comment instead of the
// one ssh-keygen gave it.
func withComment(c *sshtest.Client, comment string) string {
	f := strings.Fields(c.PublicKey)
	return f[0] + " " + f[1] + " " + comment
}

// keyFingerprint is the SHA256 fingerprint of c's key, as ssh-keygen
// prints it.
func keyFingerprint(t *testing.T, c *sshtest.Client) string {
	t.Helper()
	out, err := exec.Command("ssh-keygen", "-l", "-f", c.KeyFile+".pub").Output()
	if err != nil {
		t.Fatal(err)
	}
	return printedFingerprint.FindString(string(out))
}

// TestWhoLoggedIn: a login puts the key's fingerprint and comment in the
// agent's log and journal; `converge who` in a second session lists the
// first; the converge command works in exec sessions, in `bash -l` (whose
// /etc/profile resets PATH for root) and in a login shell at a prompt.
func TestWhoLoggedIn(t *testing.T) {
	t.Parallel()
	r := startServer(t)
	alice, bob := sshtest.New(t), sshtest.New(t)
	dir, state := t.TempDir(), t.TempDir()
	keys := withComment(alice, "alice@laptop") + "\n" + withComment(bob, "bob@desk") + "\n"
	if err := os.WriteFile(filepath.Join(dir, ".authorized_keys"), []byte(keys), 0o600); err != nil {
		t.Fatal(err)
	}
	// An empty HOME: no ~/.profile or ~/.bashrc of this machine's puts
	// anything back on PATH, only /etc/profile runs.
	p := runAgentBinary(t, r, dir, []string{"HOME=" + t.TempDir()}, "--id", "who-job", "--stay", "--shell", "bash", "--state-dir", state)
	_, line := printedTrust(t, p.Out.String())
	addKnownHost(t, alice, line)
	addKnownHost(t, bob, line)
	tgt := r.target("who-job")

	ctx, cancel := context.WithCancel(context.Background())
	first := alice.Command(ctx, "ssh", tgt, tgt.Dest(), "sleep 120")
	if err := first.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cancel(); first.Wait() })

	aliceFP := keyFingerprint(t, alice)
	waitFor(t, "alice's login and session in the agent's log", func() bool {
		return logged(p.All.String(), "login accepted", aliceFP, "alice@laptop", "way=ssh") &&
			logged(p.All.String(), "session started", aliceFP, "alice@laptop", "kind=exec", "sleep 120")
	})

	who := bob.SSH(tgt, 0, "converge who")
	for _, want := range []string{"alice@laptop", aliceFP, "bob@desk (you)", "exec \"sleep 120\""} {
		if !strings.Contains(who.Stdout, want) {
			t.Errorf("converge who lacks %q:\n%s%s", want, who.Stdout, who.Stderr)
		}
	}
	var people []journal.Person
	if js := bob.SSH(tgt, 0, "converge who --json"); json.Unmarshal([]byte(js.Stdout), &people) != nil || len(people) != 2 {
		t.Errorf("converge who --json: %d people from %q", len(people), js.Stdout)
	}
	if help := bob.SSH(tgt, 0, "converge --help"); !strings.Contains(help.Stdout, "who") || !strings.Contains(help.Stdout, "status") {
		t.Errorf("converge --help lists no who and status:\n%s", help.Stdout)
	}
	// Debian's /etc/profile resets PATH for root in a login shell.
	if st := bob.SSH(tgt, 0, "bash -l -c 'converge status'"); !strings.Contains(st.Stdout, "agent who-job") {
		t.Errorf("converge status in bash -l: %q %q", st.Stdout, st.Stderr)
	}
	// A login shell at a prompt, on a terminal.
	shell := bob.Run("ssh", tgt, "converge who\nexit\n", "-tt", tgt.Dest())
	if !strings.Contains(shell.Stdout, "bob@desk (you)") {
		t.Errorf("converge who in a login shell on a terminal:\n%s\n%s", shell.Stdout, shell.Stderr)
	}

	// SFTP sessions are journalled with their kind and bytes.
	if res := bob.Run("sftp", tgt, "ls\n", "-b", "-", tgt.Dest()); res.Code != 0 {
		t.Errorf("sftp: exit %d: %s", res.Code, res.Stderr)
	}
	waitFor(t, "the sftp session's end in the log", func() bool {
		return logged(p.All.String(), "session ended", "kind=sftp", "bytes_in=")
	})

	// The journal file holds an unbroken chain with alice's login.
	if !journalHasLogin(t, filepath.Join(state, "journal.jsonl"), "alice@laptop", aliceFP) {
		t.Errorf("no login of alice@laptop %s in the journal", aliceFP)
	}
}

// journalHasLogin reads the journal file, checking its chain, and reports
// whether it holds a login of the key with comment and fingerprint fp.
func journalHasLogin(t *testing.T, file, comment, fp string) bool {
	t.Helper()
	f, err := os.Open(file)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	entries, err := journal.Read(f)
	if err != nil {
		t.Fatalf("journal: %v", err)
	}
	for _, e := range entries {
		if e.Kind == journal.KindLogin && e.Login.Comment == comment && e.Login.Fingerprint == fp {
			return true
		}
	}
	return false
}

// listeningSockets lists what process pid listens on, from /proc: TCP
// and UDP ports ("tcp :PORT") and Unix socket paths ("unix PATH").
func listeningSockets(t *testing.T, pid int) []string {
	t.Helper()
	fds, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	if err != nil {
		t.Fatal(err)
	}
	inodes := map[string]bool{}
	for _, fd := range fds {
		l, _ := os.Readlink(fmt.Sprintf("/proc/%d/fd/%s", pid, fd.Name()))
		if strings.HasPrefix(l, "socket:[") {
			inodes[strings.TrimSuffix(strings.TrimPrefix(l, "socket:["), "]")] = true
		}
	}
	var out []string
	for _, table := range []string{"tcp", "tcp6", "udp", "udp6"} {
		b, _ := os.ReadFile("/proc/net/" + table)
		for _, line := range strings.Split(string(b), "\n")[1:] {
			f := strings.Fields(line)
			// st 0A is TCP_LISTEN; a bound UDP socket (07) listens too.
			if len(f) > 9 && inodes[f[9]] && (f[3] == "0A" || strings.HasPrefix(table, "udp")) {
				out = append(out, table+" "+f[1])
			}
		}
	}
	b, _ := os.ReadFile("/proc/net/unix")
	for _, line := range strings.Split(string(b), "\n")[1:] {
		f := strings.Fields(line)
		// Flags 00010000 is __SO_ACCEPTCON: a listening socket.
		if len(f) > 7 && f[3] == "00010000" && inodes[f[6]] {
			out = append(out, "unix "+f[7])
		}
	}
	return out
}

// TestAgentListensOnlyOnItsSocket: the agent never listens on the
// network; its one listening socket is the converge command's, in its
// private state folder.
func TestAgentListensOnlyOnItsSocket(t *testing.T) {
	t.Parallel()
	if runtime.GOOS != "linux" {
		t.Skip("reads /proc")
	}
	r := startServer(t)
	c := sshtest.New(t)
	state := t.TempDir()
	p := runAgentBinary(t, r, keyDir(t, c), nil, "--id", "listen-job", "--stay", "--state-dir", state)
	_, line := printedTrust(t, p.Out.String())
	addKnownHost(t, c, line)
	tgt := r.target("listen-job")
	c.SSH(tgt, 0, "converge status")
	got := listeningSockets(t, p.cmd.Process.Pid)
	if len(got) != 1 || got[0] != "unix "+filepath.Join(state, "ctl") {
		t.Errorf("the agent listens on %q; want only the converge command's socket %s", got, filepath.Join(state, "ctl"))
	}
	if fi, err := os.Stat(state); err != nil || fi.Mode().Perm() != 0o700 {
		t.Errorf("state folder %s: %v, %v; want mode 0700", state, fi.Mode(), err)
	}
}
