//go:build !windows

package sshd

import (
	"os/exec"
	"testing"
)

func TestLoginShell(t *testing.T) {
	bash, err := exec.LookPath("bash")
	if err != nil {
		t.Skip("no bash in PATH")
	}
	for _, tc := range []struct{ shell, want string }{
		{"/bin/sh", "/bin/sh"},   // $SHELL when it exists
		{"/no/such/shell", bash}, // else bash
		{"", bash},               // unset: bash
	} {
		t.Setenv("SHELL", tc.shell)
		if got := loginShell(); got != tc.want {
			t.Errorf("SHELL=%q: loginShell() = %q, want %q", tc.shell, got, tc.want)
		}
	}
}
