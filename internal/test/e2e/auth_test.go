package e2e

import (
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/converge-ci/converge/agent"
	"github.com/converge-ci/converge/internal/test/sshtest"
)

var (
	printedFingerprint = regexp.MustCompile(`SHA256:[A-Za-z0-9+/]+`)
	printedKnownHost   = regexp.MustCompile(`(?m)^\s*(\S+ ssh-ed25519 \S+)\s*$`)
)

// printedTrust returns the host-key fingerprint and the known_hosts line
// an agent printed for its users.
func printedTrust(t *testing.T, out string) (fingerprint, knownHosts string) {
	t.Helper()
	fp := printedFingerprint.FindString(out)
	kh := printedKnownHost.FindStringSubmatch(out)
	if fp == "" || kh == nil {
		t.Fatalf("agent output lacks a SHA256 fingerprint or a known_hosts line:\n%s", out)
	}
	return fp, kh[1]
}

// addKnownHost appends line to c's known_hosts, as a user following the
// agent's instructions does.
func addKnownHost(t *testing.T, c *sshtest.Client, line string) {
	t.Helper()
	f, err := os.OpenFile(c.KnownHosts, os.O_APPEND|os.O_WRONLY, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	fmt.Fprintln(f, line)
}

// TestRefusedLogins: an unknown key, an unknown user name and a wrong host
// key are all refused (gliderlabs lets everyone in when no auth handler is
// set; this guards that trap).
func TestRefusedLogins(t *testing.T) {
	t.Parallel()
	r := startServer(t)
	c := sshtest.New(t)
	a := startAgent(t, r, "guarded-job", c)
	tgt := r.target("guarded-job")
	c.SSH(tgt, 0, "true")

	stranger := sshtest.New(t)
	stranger.Trust("guarded-job", a.HostKey())
	if res := stranger.Run("ssh", tgt, "", tgt.Dest(), "true"); res.Code != 255 || !strings.Contains(res.Stderr, "Permission denied") {
		t.Errorf("unknown key: exit %d, stderr %q; want 255, Permission denied", res.Code, res.Stderr)
	}

	wrongUser := tgt
	wrongUser.User = "root"
	if res := c.Run("ssh", wrongUser, "", wrongUser.Dest(), "true"); res.Code != 255 || !strings.Contains(res.Stderr, "Permission denied") {
		t.Errorf("user root: exit %d, stderr %q; want 255, Permission denied", res.Code, res.Stderr)
	}

	// A client that trusts another key for this ID does not talk to it.
	fooled := sshtest.New(t)
	other := startAgent(t, r, "other-job", nil, func(cfg *agent.Config) { cfg.AuthorizedKeys = fooled.PublicKey })
	fooled.Trust("guarded-job", other.HostKey())
	os.WriteFile(filepath.Join(a.Dir, ".authorized_keys"), []byte(c.PublicKey+"\n"+fooled.PublicKey+"\n"), 0o600)
	if res := fooled.Run("ssh", tgt, "", tgt.Dest(), "true"); res.Code != 255 || !strings.Contains(res.Stderr, "Host key verification failed") {
		t.Errorf("wrong host key: exit %d, stderr %q; want 255, Host key verification failed", res.Code, res.Stderr)
	}
}

// TestHostKeyFingerprint: what the agent prints is what ssh records when
// it meets the host, and the printed known_hosts line lets ssh verify.
func TestHostKeyFingerprint(t *testing.T) {
	t.Parallel()
	r := startServer(t)
	c := sshtest.New(t)
	more := filepath.Join(t.TempDir(), "more_keys") // read at each login
	os.WriteFile(more, nil, 0o600)
	a := startAgent(t, r, "fp-job", nil, func(cfg *agent.Config) {
		cfg.AuthorizedKeys = c.PublicKey
		cfg.AuthorizedKeysFiles = []string{more}
	})
	tgt := r.target("fp-job")
	fp, line := printedTrust(t, a.Out.String())

	// ssh meets the host for the first time and records its key.
	cmd := c.Command(t.Context(), "ssh", tgt, tgt.Dest(), "true")
	for i, arg := range cmd.Args {
		if arg == "StrictHostKeyChecking=yes" {
			cmd.Args[i] = "StrictHostKeyChecking=accept-new"
		}
	}
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("first ssh: %v\n%s", err, out)
	}
	if got := c.Fingerprint("fp-job"); got != fp {
		t.Errorf("ssh recorded %s, agent printed %s", got, fp)
	}
	recorded, _ := os.ReadFile(c.KnownHosts)
	if strings.TrimSpace(string(recorded)) != line {
		t.Errorf("ssh recorded known_hosts %q, agent printed %q", recorded, line)
	}

	// A user who pastes the printed line verifies the key with strict checking.
	u := sshtest.New(t)
	addKnownHost(t, u, line)
	os.WriteFile(more, []byte(u.PublicKey+"\n"), 0o600)
	u.SSH(tgt, 0, "true")
}

// TestAgentKeySources runs the agent binary with keys from a URL, from
// CONVERGE_AUTHORIZED_KEYS and a host key from CONVERGE_HOST_KEY; users
// trust it through the printed known_hosts line.
func TestAgentKeySources(t *testing.T) {
	t.Parallel()
	r := startServer(t)
	fromURL, fromEnv := sshtest.New(t), sshtest.New(t)
	keys := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		if req.URL.Path != "/someone.keys" {
			http.NotFound(w, req)
			return
		}
		io.WriteString(w, fromURL.PublicKey+"\n")
	}))
	defer keys.Close()

	hostKey := filepath.Join(t.TempDir(), "host_key")
	if out, err := exec.Command("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", hostKey).CombinedOutput(); err != nil {
		t.Fatalf("ssh-keygen: %v\n%s", err, out)
	}
	pemData, _ := os.ReadFile(hostKey)
	out, err := exec.Command("ssh-keygen", "-l", "-f", hostKey+".pub").Output()
	if err != nil {
		t.Fatal(err)
	}
	wantFP := printedFingerprint.FindString(string(out))

	p := runAgentBinary(t, r, t.TempDir(),
		[]string{"CONVERGE_AUTHORIZED_KEYS=" + fromEnv.PublicKey, "CONVERGE_HOST_KEY=" + string(pemData)},
		"--id", "keys-job", "--stay", "--authorized-keys-url", keys.URL+"/someone.keys")
	fp, line := printedTrust(t, p.Out.String())
	if fp != wantFP {
		t.Errorf("agent printed host key %s, want the one from CONVERGE_HOST_KEY %s", fp, wantFP)
	}
	tgt := r.target("keys-job")
	for name, c := range map[string]*sshtest.Client{"URL": fromURL, "environment": fromEnv} {
		addKnownHost(t, c, line)
		if res := c.SSH(tgt, 0, "echo in"); strings.TrimSpace(res.Stdout) != "in" {
			t.Errorf("key from %s: stdout %q", name, res.Stdout)
		}
	}

	// A refused login is logged with the offered key's fingerprint.
	stranger := sshtest.New(t)
	addKnownHost(t, stranger, line)
	if res := stranger.Run("ssh", tgt, "", tgt.Dest(), "true"); res.Code != 255 {
		t.Errorf("stranger: exit %d, want 255", res.Code)
	}
	out, err = exec.Command("ssh-keygen", "-l", "-f", stranger.KeyFile+".pub").Output()
	if err != nil {
		t.Fatal(err)
	}
	strangerFP := printedFingerprint.FindString(string(out))
	waitFor(t, "the refused login in the agent's log", func() bool {
		for _, l := range strings.Split(p.All.String(), "\n") {
			if strings.Contains(l, "login refused") && strings.Contains(l, strangerFP) {
				return true
			}
		}
		return false
	})
}

// TestAgentRefusesToStart: with no way to log in, or a key URL that
// fails, the agent binary stops at once with a message saying what to do.
func TestAgentRefusesToStart(t *testing.T) {
	t.Parallel()
	missing := httptest.NewServer(http.NotFoundHandler())
	defer missing.Close()
	for _, tc := range []struct {
		args []string
		want []string
	}{
		{nil, []string{"nobody could log in", `echo "$(cat ~/.ssh/id_ed25519.pub)" >>`, "--authorized-keys-url"}},
		{[]string{"--authorized-keys-url", missing.URL + "/nobody.keys"}, []string{missing.URL + "/nobody.keys", "404"}},
	} {
		cmd := exec.Command(bin("agent"), append(tc.args, "ws://127.0.0.1:1")...)
		cmd.Dir = t.TempDir()
		cmd.Env = cleanEnv()
		out, err := cmd.CombinedOutput()
		ee, ok := err.(*exec.ExitError)
		if !ok || ee.ExitCode() != 2 {
			t.Errorf("agent %q: %v, want exit status 2; output %q", tc.args, err, out)
		}
		for _, w := range tc.want {
			if !strings.Contains(string(out), w) {
				t.Errorf("agent %q: output %q lacks %q", tc.args, out, w)
			}
		}
	}
}

// TestPasswordLogin: a password works only when configured, and only the
// right one. OpenSSH reads it from an askpass program.
func TestPasswordLogin(t *testing.T) {
	t.Parallel()
	r := startServer(t)
	c := sshtest.New(t)
	a := startAgent(t, r, "pw-job", nil, func(cfg *agent.Config) { cfg.Password = "correct horse" })
	c.Trust("pw-job", a.HostKey())
	tgt := r.target("pw-job")
	for _, tc := range []struct {
		password string
		want     int
	}{{"correct horse", 0}, {"correct hors", 255}, {"", 255}} {
		askpass := filepath.Join(t.TempDir(), "askpass")
		os.WriteFile(askpass, []byte("#!/bin/sh\necho '"+tc.password+"'\n"), 0o700)
		cmd := c.Command(t.Context(), "ssh", tgt, "-o", "PubkeyAuthentication=no", "-o", "PreferredAuthentications=password",
			"-o", "NumberOfPasswordPrompts=1", tgt.Dest(), "echo in")
		for i, arg := range cmd.Args {
			if arg == "BatchMode=yes" {
				cmd.Args[i] = "BatchMode=no" // askpass is a prompt
			}
		}
		cmd.Env = append(cmd.Env, "SSH_ASKPASS="+askpass, "SSH_ASKPASS_REQUIRE=force", "DISPLAY=:0")
		out, err := cmd.CombinedOutput()
		code := 0
		if ee, ok := err.(*exec.ExitError); ok {
			code = ee.ExitCode()
		} else if err != nil {
			t.Fatal(err)
		}
		if code != tc.want {
			t.Errorf("password %q: exit %d, want %d; output %q", tc.password, code, tc.want, out)
		}
	}
}

// TestCommittedKeyIgnored: with --authorized-keys-url, a key in the
// checkout's .authorized_keys (one a pull request could add) does not get
// in, unless the file is named with --authorized-keys. The agent logs each
// key source it uses.
func TestCommittedKeyIgnored(t *testing.T) {
	r := startServer(t)
	owner, committer := sshtest.New(t), sshtest.New(t)
	keys := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		io.WriteString(w, owner.PublicKey+"\n")
	}))
	defer keys.Close()
	for _, tc := range []struct {
		id    string
		named bool
	}{{"url-only-job", false}, {"url-and-named-job", true}} {
		dir := t.TempDir()
		os.WriteFile(filepath.Join(dir, ".authorized_keys"), []byte(committer.PublicKey+"\n"), 0o600)
		args := []string{"--id", tc.id, "--stay", "--authorized-keys-url", keys.URL + "/owner.keys"}
		if tc.named {
			args = append(args, "--authorized-keys", ".authorized_keys")
		}
		p := runAgentBinary(t, r, dir, nil, args...)
		_, line := printedTrust(t, p.Out.String())
		tgt := r.target(tc.id)
		addKnownHost(t, owner, line)
		addKnownHost(t, committer, line)
		owner.SSH(tgt, 0, "true")
		want := 255
		if tc.named {
			want = 0
		}
		if res := committer.Run("ssh", tgt, "", tgt.Dest(), "true"); res.Code != want {
			t.Errorf("%s: committed key: exit %d, want %d; stderr %q", tc.id, res.Code, want, res.Stderr)
		}
		logs := p.All.String()
		sources := []string{keys.URL + "/owner.keys"}
		if tc.named {
			sources = append(sources, ".authorized_keys")
		} else if !strings.Contains(logs, "ignoring") {
			t.Errorf("%s: the log does not say the directory's .authorized_keys is ignored:\n%s", tc.id, logs)
		}
		for _, s := range sources {
			if !logged(logs, `msg="authorized keys"`, "from="+s+" ", "keys=1") {
				t.Errorf("%s: the log lacks the key source %s with keys=1:\n%s", tc.id, s, logs)
			}
		}
	}
}

// logged reports whether one line of logs holds every part.
func logged(logs string, parts ...string) bool {
	for _, l := range strings.Split(logs, "\n") {
		all := true
		for _, p := range parts {
			all = all && strings.Contains(l, p)
		}
		if all {
			return true
		}
	}
	return false
}

// TestSessionEnvHidesSecrets: a session's environment lacks the agent's
// secrets (password, host key, key sources) that the job gave the agent
// through CONVERGE_* variables, and keeps the rest.
func TestSessionEnvHidesSecrets(t *testing.T) {
	r := startServer(t)
	c := sshtest.New(t)
	keys := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		io.WriteString(w, c.PublicKey+"\n")
	}))
	defer keys.Close()
	hostKey := filepath.Join(t.TempDir(), "host_key")
	if out, err := exec.Command("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", hostKey).CombinedOutput(); err != nil {
		t.Fatalf("ssh-keygen: %v\n%s", err, out)
	}
	pemData, _ := os.ReadFile(hostKey)
	secrets := map[string]string{
		"CONVERGE_PASSWORD":            "hunter2-not-for-sessions",
		"CONVERGE_HOST_KEY":            string(pemData),
		"CONVERGE_AUTHORIZED_KEYS":     c.PublicKey,
		"CONVERGE_AUTHORIZED_KEYS_URL": keys.URL + "/u.keys?token=url-token-not-for-sessions",
	}
	env := []string{"JOB_SETTING=kept"}
	for k, v := range secrets {
		env = append(env, k+"="+v)
	}
	p := runAgentBinary(t, r, t.TempDir(), env, "--id", "env-job", "--stay")
	_, line := printedTrust(t, p.Out.String())
	addKnownHost(t, c, line)
	got := c.SSH(r.target("env-job"), 0, "env").Stdout
	if !strings.Contains(got, "JOB_SETTING=kept") {
		t.Errorf("session env lacks the job's JOB_SETTING=kept:\n%s", got)
	}
	for name, value := range secrets {
		firstLine, _, _ := strings.Cut(value, "\n")
		if strings.Contains(got, name+"=") || strings.Contains(got, firstLine) {
			t.Errorf("session env shows %s:\n%s", name, got)
		}
	}
	if strings.Contains(got, "CONVERGE_AUTHORIZED_KEYS_DATA=") || strings.Contains(got, "PRIVATE KEY") {
		t.Errorf("session env shows key data or a private key:\n%s", got)
	}
}
