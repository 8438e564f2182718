package e2e

import (
	"os/exec"
	"strings"
	"testing"
)

// TestServerIsABitPipe proves from the build graph that the server cannot
// speak SSH or SFTP, or take part in resumable streams: it links none of
// those packages.
func TestServerIsABitPipe(t *testing.T) {
	t.Parallel()
	deps := goListDeps(t, "../../../cmd/converge")
	for _, banned := range []string{
		"golang.org/x/crypto/ssh",
		"github.com/gliderlabs/ssh",
		"github.com/pkg/sftp",
		"github.com/converge-ci/converge/internal/resume",
		"github.com/converge-ci/converge/agent",
		"github.com/converge-ci/converge/agent/sshd",
	} {
		if deps[banned] {
			t.Errorf("cmd/converge links %s; the server must stay a bit pipe", banned)
		}
	}
}

// TestImportsFlowOneWay: the agent and the client tools (the browser
// terminal's included) never import the server, and the server never
// imports them; the agent's lifetime never
// imports the agent (the agent imports it), nor does the agent's SSH
// server, which is handed its connections as a net.Listener.
func TestImportsFlowOneWay(t *testing.T) {
	t.Parallel()
	for pkg, banned := range map[string][]string{
		"../../../agent":          {"github.com/converge-ci/converge/server", "github.com/converge-ci/converge/wsproxy"},
		"../../../agent/lifetime": {"github.com/converge-ci/converge/agent", "github.com/converge-ci/converge/server", "github.com/converge-ci/converge/wsproxy"},
		"../../../agent/sshd":     {"github.com/converge-ci/converge/agent", "github.com/converge-ci/converge/agent/lifetime", "github.com/converge-ci/converge/server", "github.com/converge-ci/converge/wsproxy"},
		"../../../wsproxy":        {"github.com/converge-ci/converge/server", "github.com/converge-ci/converge/agent"},
		"../../../server":         {"github.com/converge-ci/converge/agent", "github.com/converge-ci/converge/wsproxy"},
		"../../../webterm":        {"github.com/converge-ci/converge/server", "github.com/converge-ci/converge/agent", "github.com/converge-ci/converge/wsproxy"},
	} {
		deps := goListDeps(t, pkg)
		for _, b := range banned {
			if deps[b] {
				t.Errorf("%s imports %s", pkg, b)
			}
		}
	}
}

func goListDeps(t *testing.T, pkg string) map[string]bool {
	t.Helper()
	out, err := exec.Command("go", "list", "-deps", pkg).CombinedOutput()
	if err != nil {
		t.Fatalf("go list -deps %s: %v\n%s", pkg, err, out)
	}
	deps := map[string]bool{}
	for _, l := range strings.Fields(string(out)) {
		deps[l] = true
	}
	return deps
}
