//go:build windows

package agent

import (
	"os"
	"os/exec"
	"syscall"
)

// prepareStep hands a cmd.exe command line (cmd /c ...) to cmd.exe as
// written, rather than quoted the way Go quotes arguments for
// CommandLineToArgvW, which cmd.exe does not follow. PowerShell, and
// every other program, parses Go's quoting.
func prepareStep(cmd *exec.Cmd) {
	if line, ok := cmdExeLine(cmd.Args, syscall.EscapeArg); ok {
		cmd.SysProcAttr = &syscall.SysProcAttr{CmdLine: line}
	}
}

// ownGroup puts cmd in a process group of its own, so the console's
// Ctrl-C meant for the agent is not its; it is killed when its context
// ends.
func ownGroup(cmd *exec.Cmd) {
	if cmd.SysProcAttr == nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{}
	}
	cmd.SysProcAttr.CreationFlags |= syscall.CREATE_NEW_PROCESS_GROUP
}

// forwardSignal does nothing: Windows delivers a console's Ctrl-C to
// every process attached to it, the command included, and has no other
// signals to pass on.
func forwardSignal(*os.Process, os.Signal) {}

func processStatus(ps *os.ProcessState) int { return ps.ExitCode() }
