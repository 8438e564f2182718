package e2e

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/converge-ci/converge/internal/test/sshtest"
)

// TestAuthorizedKeysEnvOneMeaning: CONVERGE_AUTHORIZED_KEYS, the CI
// secret, means the keys that may log in, whether it holds the lines or,
// as a GitLab variable of type File makes it, the path of a file holding
// them; and --help names it as no file flag's twin (it used to be
// --authorized-keys's, while the README called it key lines).
func TestAuthorizedKeysEnvOneMeaning(t *testing.T) {
	t.Parallel()
	help, err := exec.Command(bin("agent"), "--help").CombinedOutput()
	if err != nil {
		t.Fatalf("agent --help: %v\n%s", err, help)
	}
	if strings.Contains(string(help), "(env CONVERGE_AUTHORIZED_KEYS)") {
		t.Errorf("agent --help makes CONVERGE_AUTHORIZED_KEYS a flag's twin, besides the keys themselves:\n%s", help)
	}
	r := startServer(t)
	for _, tc := range []struct{ name, id string }{{"lines", "env-lines"}, {"file", "env-file"}} {
		u := sshtest.New(t)
		v := u.PublicKey
		if tc.name == "file" {
			v = filepath.Join(t.TempDir(), "CONVERGE_AUTHORIZED_KEYS")
			if err := os.WriteFile(v, []byte(u.PublicKey+"\n"), 0o600); err != nil {
				t.Fatal(err)
			}
		}
		p := runAgentBinary(t, r, t.TempDir(), []string{"CONVERGE_AUTHORIZED_KEYS=" + v}, "--id", tc.id, "--stay")
		_, line := printedTrust(t, p.Out.String())
		addKnownHost(t, u, line)
		if res := u.SSH(r.target(tc.id), 0, "echo in"); strings.TrimSpace(res.Stdout) != "in" {
			t.Errorf("keys as %s in CONVERGE_AUTHORIZED_KEYS: stdout %q", tc.name, res.Stdout)
		}
	}
}
