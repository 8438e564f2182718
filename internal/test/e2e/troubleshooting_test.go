package e2e

import (
	"io"
	"net/http"
	"os/exec"
	"strings"
	"testing"

	"github.com/converge-ci/converge/internal/test/sshtest"
	"github.com/converge-ci/converge/server"
)

// TestDocTroubleshootingMessages brings about the situations the README's
// Troubleshooting names, with the real binaries, and checks that what
// users see is what the section quotes (with "ID" standing for the ID).
func TestDocTroubleshootingMessages(t *testing.T) {
	t.Parallel()
	section := readmeSection(t, "Troubleshooting")
	quoted := func(doc, id string) string {
		t.Helper()
		if !strings.Contains(section, doc) {
			t.Fatalf("the README's Troubleshooting no longer quotes %q: update this test with it", doc)
		}
		return strings.ReplaceAll(doc, `"ID"`, `"`+id+`"`)
	}
	r := startServer(t, func(c *server.Config) { c.MaxAgentsPerAddr = 2 })
	c := sshtest.New(t)
	agentSays := func(id string) (string, int) {
		cmd := exec.Command(bin("agent"), "--id", id, r.URL)
		cmd.Dir, cmd.Env = keyDir(t, c), cleanEnv()
		out, _ := cmd.CombinedOutput()
		return string(out), cmd.ProcessState.ExitCode()
	}

	// An ID in use: the second agent stops with status 1.
	first := runAgentBinary(t, r, keyDir(t, c), nil, "--id", "trouble-a")
	want := quoted(`rendezvous ID "ID" is already used by a connected agent; choose another --id`, "trouble-a")
	if out, code := agentSays("trouble-a"); !strings.Contains(out, want) || code != 1 {
		t.Errorf("a second agent with a connected agent's ID: exit %d, said\n%s\nwant status 1 and %q", code, out, want)
	}

	// An ID whose agent dropped: reserved for it. The server learns of the
	// drop when the link closes, so until then the ID is still in use.
	first.cmd.Process.Kill()
	<-first.done
	want = quoted(`rendezvous ID "ID" is reserved until `, "trouble-a")
	want2 := quoted(` UTC for an agent whose link dropped`, "")
	var out string
	waitFor(t, "the dropped agent's reservation", func() bool {
		out, _ = agentSays("trouble-a")
		return !strings.Contains(out, "already used")
	})
	if !strings.Contains(out, want) || !strings.Contains(out, want2) {
		t.Errorf("an agent asking for a dropped agent's ID said\n%s\nwant %q and %q", out, want, want2)
	}

	// No agent with that ID, as wsproxy reports it to ssh.
	want = quoted(`refused the connection: 404 no agent is connected with ID "ID"`, "nobody")
	wsproxy := exec.Command(bin("wsproxy"), r.URL+"/client/nobody")
	wsproxy.Env = cleanEnv()
	got, _ := wsproxy.CombinedOutput()
	if !strings.HasPrefix(string(got), "wsproxy: ") || !strings.Contains(string(got), want) {
		t.Errorf("wsproxy to an unknown ID said %q, want wsproxy: ... %q", got, want)
	}

	// A server built without make dist.
	resp, err := http.Get(r.HTTP + "/static/agent")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	want = quoted("is not available: this server was\n  built without the downloadable binaries", "")
	if resp.StatusCode != http.StatusNotFound || !strings.Contains(string(body), strings.ReplaceAll(want, "\n  ", " ")) {
		t.Errorf("GET /static/agent = %d %q, want 404 and %q", resp.StatusCode, body, want)
	}

	// Too many agents from one address: the agent logs the 429 and retries.
	// The dropped agent's reservation counts, so one more agent fills it.
	runAgentBinary(t, r, keyDir(t, c), nil, "--id", "trouble-b")
	want = quoted("refused the connection: 429 too many agents from ", "")
	j := startShellJob(t, "sh", "exec "+bin("agent")+" --id trouble-c "+r.URL, keyDir(t, c))
	waitFor(t, "the agent's 429", func() bool { return strings.Contains(j.out.String(), "429") })
	if !strings.Contains(j.out.String(), want) {
		t.Errorf("an agent over its address's limit said\n%s\nwant %q", j.out, want)
	}
}
