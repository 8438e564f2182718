//go:build windows

package sshd

import (
	"fmt"
	"io"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"
	"unsafe"

	"github.com/charmbracelet/x/conpty"
	"github.com/gliderlabs/ssh"
	"golang.org/x/sys/windows"
)

// killGrace is how long the last output of a session may take to drain.
const killGrace = 3 * time.Second

// loginShell is PowerShell (pwsh when installed, else Windows PowerShell),
// else cmd.exe. --shell cmd chooses cmd.exe.
func loginShell() string {
	for _, sh := range []string{"pwsh.exe", "powershell.exe"} {
		if p, err := exec.LookPath(sh); err == nil {
			return p
		}
	}
	if p, err := exec.LookPath("cmd.exe"); err == nil {
		return p
	}
	return "cmd.exe"
}

func isCmd(shell string) bool {
	b := strings.ToLower(filepath.Base(shell))
	return b == "cmd.exe" || b == "cmd"
}

func shellCommandFlag(shell string) string {
	if isCmd(shell) {
		return "/c"
	}
	return "-Command"
}

func signalNumber(*exec.ExitError) int { return 0 }

// run starts cmd for s and waits for it: through a ConPTY when the client
// asked for a terminal, with pipes when not. Every process of the session
// is in a job object that is closed when the session ends, so nothing it
// started outlives it.
func (d *Server) run(s ssh.Session, cmd *exec.Cmd) (int, error) { return d.runTapped(s, cmd, nil) }

// runTapped is run with a terminal's output, input and sizes going
// through tap too (a shell's recording; nil: none).
func (d *Server) runTapped(s ssh.Session, cmd *exec.Cmd, tap *shellTap) (int, error) {
	if len(cmd.Args) == 3 {
		// A command: hand it to the shell verbatim, for the shell to
		// parse, rather than re-quoted the way Go quotes arguments (which
		// cmd.exe does not understand).
		cmd.SysProcAttr = &syscall.SysProcAttr{CmdLine: syscall.EscapeArg(cmd.Path) + " " + cmd.Args[1] + " " + cmd.Args[2]}
	}
	job, err := newKillJob()
	if err != nil {
		return 255, err
	}
	defer windows.CloseHandle(job) // kills what is left in the job

	if ptyReq, winCh, isPty := s.Pty(); isPty {
		return d.runConPTY(s, cmd, job, ptyReq, winCh, tap)
	}
	return runPipes(s, cmd, job)
}

// runPipes runs cmd without a terminal, its output going straight to s,
// and ends the processes of job when the client leaves first.
func runPipes(s ssh.Session, cmd *exec.Cmd, job windows.Handle) (int, error) {
	stdin, err := cmd.StdinPipe()
	if err != nil {
		return 255, err
	}
	cmd.Stdout = s
	cmd.Stderr = s.Stderr()
	cmd.WaitDelay = killGrace
	if err := cmd.Start(); err != nil {
		return 255, fmt.Errorf("start command: %w", err)
	}
	assignToJob(job, cmd.Process.Pid)
	go func() { io.Copy(stdin, s); stdin.Close() }() // ends with the session or the command's stdin
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		return exitCode(err)
	case <-s.Context().Done():
		windows.TerminateJobObject(job, 1)
		return exitCode(<-done)
	}
}

// runConPTY runs cmd attached to a Windows pseudo console sized and
// resized like the client's terminal.
func (d *Server) runConPTY(s ssh.Session, cmd *exec.Cmd, job windows.Handle, ptyReq ssh.Pty, winCh <-chan ssh.Window, tap *shellTap) (int, error) {
	w, h := ptyReq.Window.Width, ptyReq.Window.Height
	if w <= 0 || h <= 0 {
		w, h = conpty.DefaultWidth, conpty.DefaultHeight
	}
	cpty, err := conpty.New(w, h, 0)
	if err != nil {
		return 255, fmt.Errorf("open a pseudo console (needs Windows 10 1809 or later): %w", err)
	}
	defer cpty.Close()
	_, handle, err := cpty.Spawn(cmd.Path, cmd.Args, &syscall.ProcAttr{Dir: cmd.Dir, Env: cmd.Env, Sys: cmd.SysProcAttr})
	if err != nil {
		return 255, fmt.Errorf("start shell in pseudo console: %w", err)
	}
	proc := windows.Handle(handle)
	defer windows.CloseHandle(proc)
	windows.AssignProcessToJobObject(job, proc)

	defer followWindow(winCh, func(win ssh.Window) { cpty.Resize(win.Width, win.Height); tap.resize(win) })()
	go io.Copy(cpty, tap.input(s)) // ends when the session or the console closes
	output := make(chan struct{})
	go func() { io.Copy(tap.output(s), cpty); close(output) }()

	exited := make(chan struct{})
	go func() { windows.WaitForSingleObject(proc, windows.INFINITE); close(exited) }()
	select {
	case <-exited:
	case <-s.Context().Done():
		windows.TerminateJobObject(job, 1)
		<-exited
	}
	var code uint32
	if err := windows.GetExitCodeProcess(proc, &code); err != nil {
		return 255, fmt.Errorf("exit code: %w", err)
	}
	// Closing the console ends the output copy after what is buffered.
	cpty.Close()
	select {
	case <-output:
	case <-time.After(killGrace):
	}
	return int(code), nil
}

// newKillJob creates a job object that kills its processes when its last
// handle closes.
func newKillJob() (windows.Handle, error) {
	job, err := windows.CreateJobObject(nil, nil)
	if err != nil {
		return 0, fmt.Errorf("create job object: %w", err)
	}
	info := windows.JOBOBJECT_EXTENDED_LIMIT_INFORMATION{
		BasicLimitInformation: windows.JOBOBJECT_BASIC_LIMIT_INFORMATION{LimitFlags: windows.JOB_OBJECT_LIMIT_KILL_ON_JOB_CLOSE},
	}
	if _, err := windows.SetInformationJobObject(job, windows.JobObjectExtendedLimitInformation,
		uintptr(unsafe.Pointer(&info)), uint32(unsafe.Sizeof(info))); err != nil {
		windows.CloseHandle(job)
		return 0, fmt.Errorf("set up job object: %w", err)
	}
	return job, nil
}

// assignToJob puts process pid in job. Children it starts from then on
// belong to the job too.
func assignToJob(job windows.Handle, pid int) error {
	p, err := windows.OpenProcess(windows.PROCESS_SET_QUOTA|windows.PROCESS_TERMINATE, false, uint32(pid))
	if err != nil {
		return err
	}
	defer windows.CloseHandle(p)
	return windows.AssignProcessToJobObject(job, p)
}

// hangupAtDefault: Windows has no SIGHUP to inherit.
func hangupAtDefault() {}
