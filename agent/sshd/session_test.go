package sshd

import (
	"os/exec"
	"strings"
	"testing"
)

func TestResolveShell(t *testing.T) {
	sh, err := exec.LookPath("sh")
	if err != nil {
		t.Skip("no sh in PATH")
	}
	if got, err := resolveShell("sh"); err != nil || got != sh {
		t.Errorf(`resolveShell("sh") = %q, %v; want %q`, got, err, sh)
	}
	if got, err := resolveShell(""); err != nil || got == "" {
		t.Errorf(`resolveShell("") = %q, %v; want the login shell`, got, err)
	}
	if _, err := resolveShell("no-such-shell-here"); err == nil || !strings.Contains(err.Error(), "give a path or a program in PATH") {
		t.Errorf("unknown shell: error %v, want one saying what to give", err)
	}
}

func TestWithoutSecrets(t *testing.T) {
	in := []string{"PATH=/bin", "CONVERGE_PASSWORD=pw", "converge_host_key=pem", "CONVERGE_ID=job", "CONVERGE_PASSWORDS=kept", "=C:=C:\\", "CONVERGE_AUTHORIZED_KEYS_DATA=ssh-ed25519 AAAA", "CONVERGE_AGENT_TOKEN=t", "CONVERGE_ID_TOKEN=jwt"}
	want := "PATH=/bin CONVERGE_ID=job CONVERGE_PASSWORDS=kept =C:=C:\\"
	if got := strings.Join(withoutSecrets(in), " "); got != want {
		t.Errorf("withoutSecrets(%q) = %q, want %q", in, got, want)
	}
}
