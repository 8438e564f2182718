package ctl

import (
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"strings"
)

// Name is the name the agent binary answers to as the converge command.
const Name = "converge"

// IsInvokedAs reports whether argv0 (os.Args[0]) runs the agent binary
// as the converge command.
func IsInvokedAs(argv0 string) bool {
	b := strings.ToLower(filepath.Base(argv0))
	return b == Name || b == Name+".exe"
}

// Bin is the private folder that holds the converge command, and the
// shell startup files that keep it on PATH.
type Bin struct {
	Dir     string // put first on every session's PATH
	Command string // Dir/converge
	bashEnv string // for BASH_ENV
	shEnv   string // for ENV
	prompt  string // for PROMPT_COMMAND
}

// MakeBin makes stateDir/bin with converge in it, leading to exe (the
// agent binary: a symlink, or on Windows a hard link or copy named
// converge.exe), and the startup files of Env. origEnv is the agent's
// environment: a BASH_ENV or ENV of the job's own is still run after
// ours.
func MakeBin(stateDir, exe string, getenv func(string) string) (*Bin, error) {
	dir := filepath.Join(stateDir, "bin")
	if err := os.Mkdir(dir, 0o700); err != nil && !os.IsExist(err) {
		return nil, fmt.Errorf("converge command: %w", err)
	}
	b := &Bin{Dir: dir, Command: filepath.Join(dir, Name)}
	if runtime.GOOS == "windows" {
		b.Command += ".exe"
	}
	os.Remove(b.Command)
	if err := linkExe(exe, b.Command); err != nil {
		return nil, fmt.Errorf("converge command: %w", err)
	}
	keep := fmt.Sprintf(`case ":$PATH:" in *:%s:*) ;; *) PATH=%s:"$PATH"; export PATH ;; esac`, shellQuote(dir), shellQuote(dir))
	b.prompt = keep
	if p := getenv("PROMPT_COMMAND"); p != "" {
		b.prompt = keep + "; " + p
	}
	rc := func(name, chain string) (string, error) {
		text := "# Written by the Converge agent: keep the converge command on PATH,\n" +
			"# which a login shell's profile may have reset (Debian's /etc/profile does for root).\n" + keep + "\n"
		if chain != "" {
			text += ". " + shellQuote(chain) + "\n"
		}
		path := filepath.Join(stateDir, name)
		return path, os.WriteFile(path, []byte(text), 0o600)
	}
	var err error
	if b.bashEnv, err = rc("bash_env.sh", getenv("BASH_ENV")); err != nil {
		return nil, fmt.Errorf("converge command: %w", err)
	}
	if b.shEnv, err = rc("env.sh", getenv("ENV")); err != nil {
		return nil, fmt.Errorf("converge command: %w", err)
	}
	return b, nil
}

// Env returns env (a session's KEY=value list) with the converge command
// on it: Dir first on PATH, EnvCommand, and, so that a login shell whose
// profile resets PATH finds it again, BASH_ENV (bash without a terminal,
// `bash -l -c` included), ENV (sh and dash) and PROMPT_COMMAND (bash at
// a prompt) set to put Dir back.
func (b *Bin) Env(env []string) []string {
	if b == nil {
		return env
	}
	path := ""
	for _, kv := range env {
		if k, v, _ := strings.Cut(kv, "="); strings.EqualFold(k, "PATH") {
			path = v
		}
	}
	if path != "" {
		path = b.Dir + string(os.PathListSeparator) + path
	} else {
		path = b.Dir
	}
	env = append(env, "PATH="+path, EnvCommand+"="+b.Command)
	if runtime.GOOS != "windows" {
		env = append(env, "BASH_ENV="+b.bashEnv, "ENV="+b.shEnv, "PROMPT_COMMAND="+b.prompt)
	}
	return env
}

// shellQuote quotes s for a POSIX shell.
func shellQuote(s string) string {
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}

// linkExe makes dst lead to exe: a symlink where the OS has them, else a
// hard link, else a copy.
func linkExe(exe, dst string) error {
	if runtime.GOOS != "windows" {
		return os.Symlink(exe, dst)
	}
	if err := os.Link(exe, dst); err == nil {
		return nil
	}
	in, err := os.Open(exe)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o700)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}
