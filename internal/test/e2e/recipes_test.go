package e2e

import (
	"context"
	"html"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	gossh "golang.org/x/crypto/ssh"

	"github.com/converge-ci/converge/internal/test/sshtest"
)

// TestUsageRecipesWork pastes the usage page's recipes into a shell as a
// user would, with the user's own ~/.ssh (key, known_hosts from the
// agent's printed line, and the page's config block), and checks they
// reach the agent.
func TestUsageRecipesWork(t *testing.T) {
	t.Parallel()
	r := startServer(t)
	c := sshtest.New(t)
	const id = "recipe-job"
	a := startAgent(t, r, id, c)

	page := fetch(t, r.HTTP+"/?id="+id)
	recipe := func(name string) string {
		m := regexp.MustCompile(`(?s)<pre id="` + name + `"><code>(.*?)</code></pre>`).FindStringSubmatch(page)
		if m == nil {
			t.Fatalf("usage page has no recipe %s", name)
		}
		return html.UnescapeString(m[1])
	}

	// The user's home: their key, the agent's known_hosts line (as the
	// page's recipe says), and the page's ~/.ssh/config block.
	home := t.TempDir()
	dotssh := filepath.Join(home, ".ssh")
	os.MkdirAll(dotssh, 0o700)
	copyFile(t, c.KeyFile, filepath.Join(dotssh, "id_ed25519"))
	os.Chmod(filepath.Join(dotssh, "id_ed25519"), 0o600)
	line := id + " " + string(gossh.MarshalAuthorizedKey(a.HostKey()))
	if !strings.HasPrefix(recipe("known-hosts"), "echo '"+id+" ssh-ed25519 ") {
		t.Errorf("known_hosts recipe %q does not show the line the agent prints", recipe("known-hosts"))
	}
	os.WriteFile(filepath.Join(dotssh, "known_hosts"), []byte(line), 0o600)
	config := recipe("ssh-config-snippet") + "\n\nHost *\n    BatchMode yes\n    IdentitiesOnly yes\n    IdentityAgent none\n    StrictHostKeyChecking yes\n"
	os.WriteFile(filepath.Join(dotssh, "config"), []byte(config), 0o600)

	// OpenSSH finds ~/.ssh through the password database, not $HOME; these
	// wrappers point it at the test user's home, as a real home would.
	wrappers := t.TempDir()
	for _, prog := range []string{"ssh", "scp"} {
		path, err := exec.LookPath(prog)
		if err != nil {
			t.Fatal(err)
		}
		script := "#!/bin/sh\nexec " + path + ` -F "$HOME/.ssh/config" -i "$HOME/.ssh/id_ed25519" -o UserKnownHostsFile="$HOME/.ssh/known_hosts" -o GlobalKnownHostsFile=/dev/null "$@"` + "\n"
		if err := os.WriteFile(filepath.Join(wrappers, prog), []byte(script), 0o755); err != nil {
			t.Fatal(err)
		}
	}

	shell := func(command string) string {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		cmd := exec.CommandContext(ctx, "sh", "-c", command)
		cmd.Env = append(os.Environ(), "HOME="+home, "PATH="+wrappers+":"+binDir+":"+os.Getenv("PATH"))
		cmd.Dir = home
		cmd.WaitDelay = 5 * time.Second
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Errorf("%s\n%v\n%s", command, err, out)
		}
		return string(out)
	}

	if out := shell(recipe("ssh-cmd") + " echo shell-recipe"); !strings.Contains(out, "shell-recipe") {
		t.Errorf("ssh recipe output %q", out)
	}
	if out := shell("ssh " + id + " echo config-recipe"); !strings.Contains(out, "config-recipe") {
		t.Errorf("ssh with the page's config block: output %q", out)
	}
	// The files recipes: the first scp line uploads build.log.
	os.WriteFile(filepath.Join(home, "build.log"), []byte("log contents\n"), 0o600)
	scpUp := strings.Split(recipe("sftp-cmd"), "\n")[1]
	shell(scpUp)
	if b, err := os.ReadFile(filepath.Join(a.Dir, "build.log")); err != nil || string(b) != "log contents\n" {
		t.Errorf("scp recipe %q: agent dir has %q, %v", scpUp, b, err)
	}
}
