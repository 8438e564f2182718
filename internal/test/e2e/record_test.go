package e2e

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"github.com/creack/pty"

	"github.com/converge-ci/converge/agent/journal"
	"github.com/converge-ci/converge/internal/test/sshtest"
)

// needTools fails the test when a program it runs is missing
// (.ci/check-tools lists them).
func needTools(t *testing.T, names ...string) {
	t.Helper()
	for _, n := range names {
		if _, err := exec.LookPath(n); err != nil {
			t.Fatalf("%s not found: install it (.ci/check-tools says which package)", n)
		}
	}
}

// ageKeygen makes an age identity file and returns it and its recipient.
func ageKeygen(t *testing.T) (file, recipient string) {
	t.Helper()
	file = filepath.Join(t.TempDir(), "age.key")
	out, err := exec.Command("age-keygen", "-o", file).CombinedOutput()
	if err != nil {
		t.Fatalf("age-keygen: %v\n%s", err, out)
	}
	m := regexp.MustCompile(`age1[0-9a-z]+`).FindString(string(out))
	if m == "" {
		t.Fatalf("age-keygen printed no recipient: %s", out)
	}
	return file, m
}

// castParts lists the parts of the recordings in dir, in order.
func castParts(t *testing.T, dir string) []string {
	t.Helper()
	parts, err := filepath.Glob(filepath.Join(dir, "*.cast.age"))
	if err != nil {
		t.Fatal(err)
	}
	sort.Strings(parts)
	return parts
}

// decryptCast runs the stock age -d with identity on each part, in
// order, as the README tells users to, and returns the asciicast.
func decryptCast(t *testing.T, identity string, parts []string) ([]byte, error) {
	t.Helper()
	var cast []byte
	for _, p := range parts {
		out, err := exec.Command("age", "-d", "-i", identity, p).Output()
		if err != nil {
			var stderr []byte
			if ee, ok := err.(*exec.ExitError); ok {
				stderr = ee.Stderr
			}
			return nil, &exec.Error{Name: "age -d " + filepath.Base(p) + ": " + string(stderr), Err: err}
		}
		cast = append(cast, out...)
	}
	return cast, nil
}

// asciinemaCat is what the stock `asciinema cat` prints of cast.
func asciinemaCat(t *testing.T, cast []byte) string {
	t.Helper()
	f := filepath.Join(t.TempDir(), "play.cast")
	if err := os.WriteFile(f, cast, 0o600); err != nil {
		t.Fatal(err)
	}
	// asciinema 2.2's cat opens /dev/tty: give it a terminal.
	cmd := exec.Command("asciinema", "cat", f)
	tty, err := pty.Start(cmd)
	if err != nil {
		t.Fatal(err)
	}
	out, _ := io.ReadAll(tty) // EIO once asciinema has exited
	tty.Close()
	if err := cmd.Wait(); err != nil {
		t.Fatalf("asciinema cat: %v\n%s\ncast:\n%s", err, out, cast)
	}
	return string(out)
}

var ansiRE = regexp.MustCompile(`\x1b\[[0-9;?]*[A-Za-z]|\x1b\][^\x07]*\x07|\r`)

// TestRecordedShell: a shell under --record-to is recorded, encrypted,
// in the job: the relay's traffic and the file hold neither what was
// typed nor what was printed, a recipient's key (SSH or age) decrypts it
// to a cast that asciinema prints, another key cannot. After kill -9 of
// the relay and of the client mid-session, the cast holds everything the
// client saw.
func TestRecordedShell(t *testing.T) {
	t.Parallel()
	needTools(t, "age", "age-keygen", "asciinema", "tmux")
	srv := startServerProc(t)
	capture := startCapture(t, srv.addr)
	via := &relay{URL: "ws://" + capture.Addr(), HTTP: "http://" + capture.Addr(), User: "ciuser", Addr: capture.Addr()}
	alice, bob := sshtest.New(t), sshtest.New(t)
	ageID, ageRecipient := ageKeygen(t)
	recipients := filepath.Join(t.TempDir(), "team.keys")
	if err := os.WriteFile(recipients, []byte(alice.PublicKey+"\n"+ageRecipient+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	dir, recDir := keyDir(t, alice), filepath.Join(t.TempDir(), "recordings")
	p := runAgentBinary(t, via, dir, []string{"HOME=" + t.TempDir()}, "--id", "rec-job", "--stay", "--shell", "bash",
		"--record-to", recipients, "--record-dir", recDir, "--state-dir", t.TempDir())
	_, line := printedTrust(t, p.Out.String())
	addKnownHost(t, alice, line)

	tm := startTerm(t, alice, via.target("rec-job"), 100, 30)
	n := markerSleep()
	typed, printed := "TYPED"+n, "PRINTED"+n
	tm.typeLine(": " + typed + "; echo PRI''NTED" + n + "; seq 1 40")
	tm.waitScreen(printed)
	tm.waitScreen("\n40\n")

	// What reaches the disk within a flush, while the shell runs.
	waitFor(t, "the printed marker in the decrypted recording", func() bool {
		cast, err := decryptCast(t, alice.KeyFile, castParts(t, recDir))
		return err == nil && strings.Contains(string(cast), printed)
	})
	// What the shell showed; the agent's own notices before it (the
	// lifetime banner) are the agent's, not the shell's, and in its log.
	seen := withoutNotices(tm.screen())
	srv.kill()
	killClient(t, tm)

	parts := castParts(t, recDir)
	var cast []byte
	waitFor(t, "the decrypted recording", func() bool {
		var err error
		cast, err = decryptCast(t, ageID, parts)
		return err == nil && strings.Contains(string(cast), "40")
	})
	shown := asciinemaCat(t, cast)
	if !strings.Contains(shown, printed) {
		t.Errorf("asciinema cat lacks the printed marker:\n%s", shown)
	}
	if l := missingLine(seen, shown); l != "" {
		t.Errorf("the client saw %q, the recording lacks it:\n%s", l, shown)
	}
	if _, err := decryptCast(t, bob.KeyFile, parts); err == nil {
		t.Error("a key that is not a recipient decrypted the recording")
	}
	for _, f := range parts {
		raw, _ := os.ReadFile(f)
		if bytes.Contains(raw, []byte(typed)) || bytes.Contains(raw, []byte(printed)) {
			t.Errorf("%s holds a marker in clear", f)
		}
	}
	checkCaptured(t, capture, typed, printed)
}

// checkCaptured fails when any mark is in clear in what the capture saw,
// raw or, from WebSocket clients, unmasked. The client's request and the
// byte counts show it saw the session.
func checkCaptured(t *testing.T, p *captureProxy, marks ...string) {
	t.Helper()
	p.mu.Lock()
	defer p.mu.Unlock()
	var all []byte
	for _, c := range p.conns {
		all = append(all, c.up.Bytes()...)
		all = append(all, c.down.Bytes()...)
		all = append(all, clientPayloads(c.up.Bytes())...)
	}
	for _, m := range marks {
		if bytes.Contains(all, []byte(m)) {
			t.Errorf("the relay's traffic carries %q in clear", m)
		}
	}
	if !bytes.Contains(all, []byte("GET /client/")) || len(all) < 4096 {
		t.Errorf("the capture saw %d bytes and no client: it missed the session", len(all))
	}
}

// missingLine returns the first non-blank line of screen that text
// lacks (escape sequences and carriage returns set aside), or "".
func missingLine(screen, text string) string {
	text = ansiRE.ReplaceAllString(text, "")
	for _, l := range strings.Split(screen, "\n") {
		if l = strings.TrimSpace(l); l != "" && !strings.Contains(text, l) {
			return l
		}
	}
	return ""
}

// withoutNotices drops the agent's notices ([converge] lines and their
// indented continuations) from a screen.
func withoutNotices(screen string) string {
	var keep []string
	in := false
	for _, l := range strings.Split(screen, "\n") {
		in = strings.HasPrefix(l, "[converge]") || (in && strings.HasPrefix(l, "  "))
		if !in {
			keep = append(keep, l)
		}
	}
	return strings.Join(keep, "\n")
}

// killClient kills the terminal's ssh with SIGKILL, as a crashed laptop.
func killClient(t *testing.T, tm *term) {
	t.Helper()
	pane := strings.TrimSpace(tm.tmux("list-panes", "-t", "t", "-F", "#{pane_pid}"))
	for _, pid := range processes("ssh") {
		if isDescendant(pid, pane) {
			syscall.Kill(pid, syscall.SIGKILL)
		}
	}
}

// isDescendant reports whether process pid descends from process anc.
func isDescendant(pid int, anc string) bool {
	for i := 0; i < 10 && pid > 1; i++ {
		b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
		if err != nil {
			return false
		}
		f := strings.Fields(string(b[bytes.LastIndexByte(b, ')')+1:]))
		if len(f) < 2 {
			return false
		}
		if f[1] == anc {
			return true
		}
		pid, _ = strconv.Atoi(f[1])
	}
	return false
}

var allowedSignersRE = regexp.MustCompile(`(converge-\S+) namespaces="converge-receipt@converge" ssh-ed25519 \S+`)

// TestReceipt: one scripted session logs in, runs a shell (recorded),
// a command, sftp and an ssh -L forward; the receipt the agent signs
// lists them all and the recording's files by their hashes, the stock ssh-keygen -Y verify accepts it against the
// allowed_signers line the agent printed at start, and refuses it with
// any byte flipped or any line dropped.
func TestReceipt(t *testing.T) {
	t.Parallel()
	r := startServer(t)
	c := sshtest.New(t)
	dir, recDir := keyDir(t, c), filepath.Join(t.TempDir(), "out")
	_, ageRecipient := ageKeygen(t)
	p := runAgentBinary(t, r, dir, []string{"HOME=" + t.TempDir(), "CONVERGE_RECORD_TO=" + ageRecipient}, "--id", "receipt-job",
		"--stay", "--shell", "bash", "--record-dir", recDir, "--state-dir", t.TempDir())
	_, line := printedTrust(t, p.Out.String())
	addKnownHost(t, c, line)
	m := allowedSignersRE.FindStringSubmatch(p.Out.String())
	if m == nil {
		t.Fatalf("the agent printed no allowed_signers line:\n%s", p.Out)
	}
	tgt := r.target("receipt-job")

	scriptedSession(t, c, tgt)
	p.cmd.Process.Signal(syscall.SIGTERM)
	p.exit()

	body, err := os.ReadFile(filepath.Join(recDir, "receipt.jsonl"))
	if err != nil {
		t.Fatal(err)
	}
	sig, err := os.ReadFile(filepath.Join(recDir, "receipt.jsonl.sig"))
	if err != nil {
		t.Fatal(err)
	}
	entries, err := journal.Read(bytes.NewReader(body))
	if err != nil {
		t.Fatalf("receipt's chain: %v", err)
	}
	kinds := map[string]bool{}
	for _, e := range entries {
		kinds[string(e.Kind)] = true
		if e.Session != nil && e.Kind == journal.KindSessionStart {
			kinds[e.Session.Kind] = true
		}
	}
	for _, k := range []string{"login", "shell", "exec", "sftp", "forward-local", "recording", "recorded", "end"} {
		if !kinds[k] {
			t.Errorf("receipt lacks %s:\n%s", k, body)
		}
	}
	// The receipt vouches for each recording file by its hash.
	for _, f := range castParts(t, recDir) {
		b, _ := os.ReadFile(f)
		sum := sha256.Sum256(b)
		if !bytes.Contains(body, []byte(filepath.Base(f)+" sha256="+hex.EncodeToString(sum[:]))) {
			t.Errorf("the receipt lacks %s with its hash:\n%s", filepath.Base(f), body)
		}
	}
	checkSignature(t, m[0], m[1], body, sig)
}

// TestRecordingSurvivesAgentKill: kill -9 of the agent while a shell
// prints fast leaves recordings that the stock age decrypts whole, part
// by part, into a cast asciinema plays, holding what was flushed.
func TestRecordingSurvivesAgentKill(t *testing.T) {
	t.Parallel()
	needTools(t, "age", "age-keygen", "asciinema", "tmux")
	r := startServer(t)
	c := sshtest.New(t)
	ageID, ageRecipient := ageKeygen(t)
	dir, recDir := keyDir(t, c), filepath.Join(t.TempDir(), "recordings")
	p := runAgentBinary(t, r, dir, []string{"HOME=" + t.TempDir(), "CONVERGE_RECORD_TO=" + ageRecipient}, "--id", "rec-kill-job",
		"--stay", "--shell", "bash", "--record-dir", recDir, "--state-dir", t.TempDir())
	_, line := printedTrust(t, p.Out.String())
	addKnownHost(t, c, line)
	tm := startTerm(t, c, r.target("rec-kill-job"), 80, 24)
	mark := "MARK" + markerSleep()
	tm.typeLine("echo " + mark[:4] + "''" + mark[4:])
	tm.waitScreen("\n" + mark)
	waitFor(t, "the marker in the decrypted recording", func() bool {
		cast, err := decryptCast(t, ageID, castParts(t, recDir))
		return err == nil && strings.Contains(string(cast), mark)
	})
	tm.typeLine("seq 1 3000000")
	// Killed while it prints, once a few parts (1 MiB each) are written.
	waitFor(t, "three parts of recording", func() bool { return len(castParts(t, recDir)) >= 3 })
	p.cmd.Process.Signal(syscall.SIGKILL)
	<-p.done

	parts := castParts(t, recDir)
	cast, err := decryptCast(t, ageID, parts)
	if err != nil {
		t.Fatalf("after kill -9, a part does not decrypt: %v", err)
	}
	shown := asciinemaCat(t, cast)
	if !strings.Contains(shown, mark) {
		t.Errorf("asciinema cat of the recording after kill -9 lacks %q", mark)
	}
	// seq's lines are all there, in order, up to the last flush.
	// The last may be cut short: the output read from the terminal at
	// the last flush ended mid-line.
	var nums []string
	for _, l := range strings.Split(ansiRE.ReplaceAllString(shown, ""), "\n") {
		if n, err := strconv.Atoi(l); err == nil && n > 0 {
			nums = append(nums, l)
		}
	}
	next := 1
	for i, l := range nums {
		want := strconv.Itoa(next)
		if l != want && !(i == len(nums)-1 && strings.HasPrefix(want, l)) {
			t.Fatalf("after line %d of seq the recording has %s: parts lost or reordered", next-1, l)
		}
		next++
	}
	t.Logf("%d parts, %d bytes of cast, seq up to %d", len(parts), len(cast), next-1)
	if next < 100000 {
		t.Errorf("the recording holds seq only up to %d, though %d parts were written", next-1, len(parts))
	}
}

// scriptedSession logs in with c and runs a shell, a command, sftp and
// an ssh -L forward to a service in the job.
func scriptedSession(t *testing.T, c *sshtest.Client, tgt sshtest.Target) {
	t.Helper()
	if res := c.Run("ssh", tgt, "exit\n", "-tt", tgt.Dest()); res.Code != 0 {
		t.Errorf("shell: exit %d: %s", res.Code, res.Stderr)
	}
	c.SSH(tgt, 0, "echo hello")
	if res := c.Run("sftp", tgt, "ls\n", "-b", "-", tgt.Dest()); res.Code != 0 {
		t.Errorf("sftp: exit %d: %s", res.Code, res.Stderr)
	}
	svc := upperService(t)
	sock := filepath.Join(t.TempDir(), "fwd.sock")
	fwd := c.Command(t.Context(), "ssh", tgt, "-N", "-o", "ExitOnForwardFailure=yes", "-L", sock+":"+svc.Addr().String(), tgt.Dest())
	background(t, fwd)
	var conn net.Conn
	waitFor(t, "the -L socket", func() bool {
		var err error
		conn, err = net.Dial("unix", sock)
		return err == nil
	})
	if got := ask(t, conn, "via -L"); got != "VIA -L" {
		t.Errorf("through -L: %q", got)
	}
	fwd.Process.Kill()
	fwd.Wait()
}

// checkSignature checks body and sig with the stock ssh-keygen -Y verify
// against the printed allowed_signers line for principal: it must pass,
// and fail with a byte flipped (one in forty, spread) or a line dropped.
func checkSignature(t *testing.T, allowedLine, principal string, body, sig []byte) {
	t.Helper()
	allowed := filepath.Join(t.TempDir(), "allowed_signers")
	os.WriteFile(allowed, []byte(allowedLine+"\n"), 0o600)
	sigFile := filepath.Join(t.TempDir(), "receipt.jsonl.sig")
	os.WriteFile(sigFile, sig, 0o600)
	verify := func(b []byte) error {
		cmd := exec.Command("ssh-keygen", "-Y", "verify", "-f", allowed, "-I", principal, "-n", "converge-receipt@converge", "-s", sigFile)
		cmd.Stdin = bytes.NewReader(b)
		out, err := cmd.CombinedOutput()
		if err != nil {
			return &exec.Error{Name: string(out), Err: err}
		}
		return nil
	}
	if err := verify(body); err != nil {
		t.Fatalf("ssh-keygen -Y verify refused the receipt: %v", err)
	}
	for i := 0; i < len(body); i += 1 + len(body)/40 {
		bad := bytes.Clone(body)
		bad[i] ^= 0x20
		if verify(bad) == nil {
			t.Errorf("the receipt with byte %d flipped passed", i)
		}
	}
	lines := bytes.SplitAfter(body, []byte("\n"))
	for i := range lines[:len(lines)-1] {
		bad := bytes.Join(append(append([][]byte{}, lines[:i]...), lines[i+1:]...), nil)
		if verify(bad) == nil {
			t.Errorf("the receipt without line %d passed", i+1)
		}
	}
}
