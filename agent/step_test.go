package agent

import (
	"bytes"
	"context"
	"os"
	"runtime"
	"strings"
	"syscall"
	"testing"
)

// TestStepStatus: the step's exit status is never lost: its own code, or
// 128+signal when a signal ended it, as shells report them.
func TestStepStatus(t *testing.T) {
	if runtime.GOOS == "windows" {
		t.Skip("POSIX shell commands")
	}
	for _, tt := range []struct {
		script string
		want   int
	}{
		{"exit 0", 0},
		{"exit 1", 1},
		{"exit 2", 2},
		{"kill -INT $$", 130},
		{"kill -KILL $$", 137},
	} {
		s := newStep([]string{"sh", "-c", tt.script}, t.TempDir(), os.Environ())
		got, err := s.runFirst(strings.NewReader(""), &bytes.Buffer{}, &bytes.Buffer{}, nil)
		if err != nil || got != tt.want {
			t.Errorf("runFirst(sh -c %q) = %d, %v; want %d", tt.script, got, err, tt.want)
		}
		if got, err := s.runAgain(context.Background(), &bytes.Buffer{}, &bytes.Buffer{}); err != nil || got != tt.want {
			t.Errorf("runAgain(sh -c %q) = %d, %v; want %d", tt.script, got, err, tt.want)
		}
	}
	s := newStep([]string{"no-such-program-converge"}, t.TempDir(), nil)
	if got, err := s.runFirst(nil, nil, nil, nil); got != statusNotFound || err == nil {
		t.Errorf("a missing program: %d, %v; want %d and an error", got, err, statusNotFound)
	}
}

// TestStepRunsAsTheJob: the step runs in its directory with its
// environment and stdin, and its output is the job's.
func TestStepRunsAsTheJob(t *testing.T) {
	if runtime.GOOS == "windows" {
		t.Skip("POSIX shell commands")
	}
	dir := t.TempDir()
	s := newStep([]string{"sh", "-c", `pwd; echo "$STEP_VAR"; cat; echo err >&2`}, dir, []string{"STEP_VAR=from-the-job", "PATH=" + os.Getenv("PATH")})
	var out, errOut bytes.Buffer
	if code, err := s.runFirst(strings.NewReader("stdin-line\n"), &out, &errOut, nil); code != 0 || err != nil {
		t.Fatalf("run: %d, %v", code, err)
	}
	if want := dir + "\nfrom-the-job\nstdin-line\n"; out.String() != want || errOut.String() != "err\n" {
		t.Errorf("stdout %q, stderr %q; want %q, %q", out.String(), errOut.String(), want, "err\n")
	}
}

// TestStepForwardsSignals: a signal the job sends the agent reaches the
// step, whose status then says so.
func TestStepForwardsSignals(t *testing.T) {
	if runtime.GOOS == "windows" {
		t.Skip("Unix signals")
	}
	s := newStep([]string{"sh", "-c", `echo ready; exec sleep 60`}, t.TempDir(), os.Environ())
	sigs := make(chan os.Signal, 1)
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	go func() {
		buf := make([]byte, 6)
		r.Read(buf) // "ready": the shell runs
		sigs <- syscall.SIGTERM
	}()
	code, err := s.runFirst(nil, w, nil, sigs)
	w.Close()
	if code != 128+int(syscall.SIGTERM) || err != nil {
		t.Errorf("status %d, %v; want %d (SIGTERM)", code, err, 128+int(syscall.SIGTERM))
	}
}

// TestStepRetryStops: a retry still running when the agent ends is
// stopped, its whole process group.
func TestStepRetryStops(t *testing.T) {
	if runtime.GOOS == "windows" {
		t.Skip("Unix signals")
	}
	s := newStep([]string{"sh", "-c", `sleep 60 & echo started; wait`}, t.TempDir(), os.Environ())
	ctx, cancel := context.WithCancel(context.Background())
	out := &notifyWriter{seen: make(chan struct{})}
	go func() { <-out.seen; cancel() }()
	code, _ := s.runAgain(ctx, out, &bytes.Buffer{})
	if code != 128+int(syscall.SIGTERM) {
		t.Errorf("status %d, want %d (SIGTERM to the group)", code, 128+int(syscall.SIGTERM))
	}
}

type notifyWriter struct {
	seen chan struct{}
	done bool
}

func (w *notifyWriter) Write(p []byte) (int, error) {
	if !w.done {
		w.done = true
		close(w.seen)
	}
	return len(p), nil
}

func TestCommandLine(t *testing.T) {
	for _, tt := range []struct {
		args []string
		want string
	}{
		{[]string{"make", "test"}, "make test"},
		{[]string{"sh", "-c", "make test && echo 'ok'"}, "make test && echo 'ok'"},
		{[]string{"/bin/bash", "-c", "go test ./..."}, "go test ./..."},
		{[]string{"pwsh", "-Command", "Invoke-Build"}, "Invoke-Build"},
		{[]string{"bash", "--noprofile", "--norc", "-eo", "pipefail", "-c", "make test"}, "make test"},
		{[]string{"pwsh", "-NoProfile", "-NonInteractive", "-Command", "./build.ps1"}, "./build.ps1"},
		{[]string{"bash", "script.sh", "-c", "x"}, "bash script.sh -c x"},
		{[]string{"cmd.exe", "/c", "build.bat"}, "build.bat"},
		{[]string{"go", "test", "-run", "A|B", "it's"}, `go test -run 'A|B' 'it'\''s'`},
		{[]string{"echo", ""}, "echo ''"},
	} {
		if got := commandLine(tt.args); got != tt.want {
			t.Errorf("commandLine(%q) = %q, want %q", tt.args, got, tt.want)
		}
	}
}

// TestCmdExeLine: cmd.exe gets its /c line as written; other programs
// keep Go's quoting.
func TestCmdExeLine(t *testing.T) {
	quote := func(s string) string { return `"` + s + `"` }
	for _, tt := range []struct {
		args []string
		want string
		ok   bool
	}{
		{[]string{"cmd", "/c", `echo "a b" & exit 3`}, `"cmd" /c echo "a b" & exit 3`, true},
		{[]string{`C:\Windows\System32\cmd.exe`, "/C", "build.bat", "release"}, `"C:\Windows\System32\cmd.exe" /C build.bat release`, true},
		{[]string{"pwsh", "-Command", "exit 3"}, "", false},
		{[]string{"cmd"}, "", false},
	} {
		got, ok := cmdExeLine(tt.args, quote)
		if got != tt.want || ok != tt.ok {
			t.Errorf("cmdExeLine(%q) = %q, %v; want %q, %v", tt.args, got, ok, tt.want, tt.ok)
		}
	}
}
