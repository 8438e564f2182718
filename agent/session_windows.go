//go:build windows

package agent

import (
	"fmt"
	"io"
	"os"
	"os/exec"

	"github.com/gliderlabs/ssh"
)

func loginShell() string {
	if p, err := exec.LookPath("powershell.exe"); err == nil {
		return p
	}
	if c := os.Getenv("COMSPEC"); c != "" {
		return c
	}
	return "cmd.exe"
}

func shellCommandFlag(shell string) string {
	if len(shell) >= 7 && shell[len(shell)-7:] == "cmd.exe" {
		return "/c"
	}
	return "-Command"
}

func signalNumber(*exec.ExitError) int { return 0 }

// run on Windows: commands without a PTY. Interactive shells through
// ConPTY are tracked in the remote-shell issue.
func (a *Agent) run(s ssh.Session, cmd *exec.Cmd) (int, error) {
	stdin, err := cmd.StdinPipe()
	if err != nil {
		return 255, err
	}
	cmd.Stdout = s
	cmd.Stderr = s.Stderr()
	if err := cmd.Start(); err != nil {
		return 255, fmt.Errorf("start command: %w", err)
	}
	go func() { io.Copy(stdin, s); stdin.Close() }()
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		return exitCode(err)
	case <-s.Context().Done():
		cmd.Process.Kill()
		return exitCode(<-done)
	}
}
