// Package statedir finds and makes the agent's private state folder: the
// journal, the `converge` command's socket and its bin/ folder. It is
// outside the checkout when the environment offers a place (a CI runner's
// temporary folder, $XDG_STATE_HOME), because a checkout is what a pull
// request controls. The folder is created 0700, checked with Lstat, and
// refused when it is a symlink or not the agent user's own; files in it
// are opened without following symlinks.
//
// It is not `agent wait`'s folder (Dir/.converge, package agent/lifetime),
// which stays where the job's steps can find it by --dir.
package statedir

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
)

// ErrUnsafe marks a state folder refused because another user or a
// symlink could redirect what the agent writes there.
var ErrUnsafe = errors.New("unsafe state folder")

// Choose returns the state folder of the agent with rendezvous ID id:
// override when not empty, else $RUNNER_TEMP/converge-ID (GitHub
// Actions), else $XDG_STATE_HOME/converge/ID, else workDir/.converge/ID.
// getenv is os.Getenv in production.
func Choose(override, id, workDir string, getenv func(string) string) string {
	switch {
	case override != "":
		return override
	case getenv("RUNNER_TEMP") != "":
		return filepath.Join(getenv("RUNNER_TEMP"), "converge-"+id)
	case getenv("XDG_STATE_HOME") != "":
		return filepath.Join(getenv("XDG_STATE_HOME"), "converge", id)
	}
	return filepath.Join(workDir, ".converge", id)
}

// Make creates dir (and its missing parents, 0700) and checks it: a
// directory, not a symlink, owned by this user, mode 0700 (a wider mode
// it made itself is narrowed; one it finds is narrowed too, as the
// folder is the agent's alone). It returns an error wrapping ErrUnsafe
// when dir is a symlink or another user's.
func Make(dir string) (string, error) {
	dir, err := filepath.Abs(dir)
	if err != nil {
		return "", err
	}
	if err := os.MkdirAll(filepath.Dir(dir), 0o700); err != nil {
		return "", fmt.Errorf("create the state folder's parent: %w", err)
	}
	if err := os.Mkdir(dir, 0o700); err != nil && !errors.Is(err, fs.ErrExist) {
		return "", fmt.Errorf("create the state folder: %w", err)
	}
	fi, err := os.Lstat(dir)
	if err != nil {
		return "", fmt.Errorf("check the state folder: %w", err)
	}
	if fi.Mode()&fs.ModeSymlink != 0 {
		return "", fmt.Errorf("%w: %s is a symlink; remove it or give another folder with --state-dir", ErrUnsafe, dir)
	}
	if !fi.IsDir() {
		return "", fmt.Errorf("%w: %s is not a folder; remove it or give another folder with --state-dir", ErrUnsafe, dir)
	}
	if err := checkOwner(fi); err != nil {
		return "", fmt.Errorf("%w: %s: %v; give another folder with --state-dir", ErrUnsafe, dir, err)
	}
	if fi.Mode().Perm() != 0o700 {
		if err := os.Chmod(dir, 0o700); err != nil {
			return "", fmt.Errorf("make the state folder private: %w", err)
		}
	}
	return dir, nil
}

// Warnings says, in words for the log, what makes dir less private than
// Make can fix: a folder others could write to before Make narrowed it
// (they may have left files there), or a parent others can write to
// without the sticky bit (they can rename the folder and put another in
// its place). Call it before Make; it changes nothing.
func Warnings(dir string) []string {
	var w []string
	if fi, err := os.Lstat(dir); err == nil && fi.IsDir() && fi.Mode().Perm()&0o002 != 0 {
		w = append(w, fmt.Sprintf("the state folder %s is writable by every user (mode %v): others may have left files in it; it is made private now", dir, fi.Mode().Perm()))
	}
	parent := filepath.Dir(dir)
	if fi, err := os.Stat(parent); err == nil && fi.Mode().Perm()&0o002 != 0 && fi.Mode()&fs.ModeSticky == 0 {
		w = append(w, fmt.Sprintf("the state folder's parent %s is writable by every user without the sticky bit: others can replace the state folder; give another with --state-dir", parent))
	}
	return w
}

// Create creates the file name in dir (made by Make) for writing,
// truncating an old one, without following a symlink there: it removes
// a symlink in its way, and opens with O_NOFOLLOW where the OS has it.
func Create(dir, name string, perm fs.FileMode) (*os.File, error) {
	path := filepath.Join(dir, name)
	if fi, err := os.Lstat(path); err == nil && fi.Mode()&fs.ModeSymlink != 0 {
		if err := os.Remove(path); err != nil {
			return nil, fmt.Errorf("%w: %s is a symlink that cannot be removed: %v", ErrUnsafe, path, err)
		}
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_TRUNC|noFollow, perm)
	if err != nil {
		return nil, fmt.Errorf("create %s: %w", path, err)
	}
	return f, nil
}
