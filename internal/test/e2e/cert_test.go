package e2e

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/converge-ci/converge/internal/test/sshtest"
)

// newCA makes a certificate authority's key pair with ssh-keygen and
// returns its private key file (the public one is FILE.pub).
func newCA(t *testing.T, name string) string {
	t.Helper()
	f := filepath.Join(t.TempDir(), name)
	if out, err := exec.Command("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", name, "-f", f).CombinedOutput(); err != nil {
		t.Fatalf("ssh-keygen: %v\n%s", err, out)
	}
	return f
}

// certify signs c's key with ca (ssh-keygen -s), with the extra
// ssh-keygen arguments given (-n principals, -V validity, -O options);
// ssh then offers the certificate (KeyFile-cert.pub) with the key.
func certify(t *testing.T, ca string, c *sshtest.Client, keyID string, args ...string) {
	t.Helper()
	args = append([]string{"-s", ca, "-I", keyID, "-z", "42"}, args...)
	if out, err := exec.Command("ssh-keygen", append(args, c.KeyFile+".pub")...).CombinedOutput(); err != nil {
		t.Fatalf("ssh-keygen -s: %v\n%s", err, out)
	}
}

func readPub(t *testing.T, f string) string {
	t.Helper()
	b, err := os.ReadFile(f + ".pub")
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(string(b))
}

// TestCertificateLogins: user certificates signed by the real ssh-keygen
// log in with the real ssh when a trusted CA signed them for the SSH user
// name (--trusted-user-ca-keys), or for a principal a cert-authority line
// lists; another principal, an expired certificate, an unlisted CA, and
// a critical option the agent does not enforce are refused. The key ID,
// serial and principal go in the log.
func TestCertificateLogins(t *testing.T) {
	t.Parallel()
	r := startServer(t)
	trusted, teamCA, rogue := newCA(t, "trusted-ca"), newCA(t, "team-ca"), newCA(t, "rogue-ca")
	caFile := filepath.Join(t.TempDir(), "ca.pub")
	if err := os.WriteFile(caFile, []byte(readPub(t, trusted)+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	lines := `cert-authority,principals="deploy,ops" ` + readPub(t, teamCA) + "\n"
	p := runAgentBinary(t, r, t.TempDir(), []string{"CONVERGE_AUTHORIZED_KEYS=" + lines},
		"--id", "cert-job", "--stay", "--trusted-user-ca-keys", caFile)
	_, known := printedTrust(t, p.Out.String())
	tgt := r.target("cert-job")

	for _, tc := range []struct {
		name, ca string
		args     []string
		ok       bool
	}{
		{"trusted CA, the SSH user name", trusted, []string{"-n", "ciuser", "-V", "-5m:+1h"}, true},
		{"a principal the cert-authority line lists", teamCA, []string{"-n", "ops"}, true},
		{"trusted CA, another principal", trusted, []string{"-n", "bob"}, false},
		{"the line's CA, a principal it does not list", teamCA, []string{"-n", "ciuser"}, false},
		{"expired", trusted, []string{"-n", "ciuser", "-V", "20200101:20200102"}, false},
		{"not yet valid", trusted, []string{"-n", "ciuser", "-V", "+1d:+2d"}, false},
		{"an unlisted CA", rogue, []string{"-n", "ciuser"}, false},
		{"force-command, which the agent does not enforce", trusted, []string{"-n", "ciuser", "-O", "force-command=true"}, false},
	} {
		c := sshtest.New(t)
		addKnownHost(t, c, known)
		keyID := strings.ReplaceAll(tc.name, " ", "-")
		certify(t, tc.ca, c, keyID, tc.args...)
		res := c.Run("ssh", tgt, "", tgt.Dest(), "echo in")
		switch {
		case tc.ok && strings.TrimSpace(res.Stdout) != "in":
			t.Errorf("%s: refused (exit %d): %s", tc.name, res.Code, res.Stderr)
			c.Transcript(tgt, "echo in")
		case tc.ok:
			waitFor(t, tc.name+": the login with its key ID in the log", func() bool {
				return logged(p.All.String(), "login accepted", "method=certificate", "cert_key_id="+keyID, "cert_serial=42")
			})
		case res.Code != 255:
			t.Errorf("%s: exit %d, want 255 (refused); stdout %q", tc.name, res.Code, res.Stdout)
		default:
			waitFor(t, tc.name+": the refusal in the log", func() bool {
				return logged(p.All.String(), "login refused", "cert_key_id="+keyID)
			})
		}
	}
}
