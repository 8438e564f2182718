package wsproxy

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"net/url"
	"os"
	"path/filepath"
	"strings"

	"github.com/converge-ci/converge/internal/wire"
)

// SSHConfig is one Converge server in ~/.ssh/config: a Host block for
// "ID.SUFFIX" whose ProxyCommand runs wsproxy, so that `ssh ID.SUFFIX`
// and any IDE that reads the SSH config reach the agent ID by name.
//
// A per-job HostKeyAlias cannot be written in a wildcard block (ssh
// expands no tokens in HostKeyAlias), so ssh checks the agent's key under
// the name typed, ID.SUFFIX: the agent prints a known_hosts line for
// ID.HOST, the default suffix.
type SSHConfig struct {
	// Server is the server's base URL, ws[s]://host[:port][/prefix].
	// Required.
	Server string
	// Suffix is the name after the ID. Default: the server's host name.
	Suffix string
	// User is the SSH user (the server's --ssh-user). "": no User line,
	// ssh's default applies.
	User string
	// Wsproxy is the path of the wsproxy command. Required.
	Wsproxy string
}

// Validate checks the fields and fills in the default suffix.
func (c *SSHConfig) Validate() error {
	u, err := url.Parse(c.Server)
	if err != nil || (u.Scheme != "ws" && u.Scheme != "wss") || u.Host == "" || u.RawQuery != "" || u.Fragment != "" {
		return fmt.Errorf("--server %q is not a server URL: give ws[s]://host[:port], as the agent was given", c.Server)
	}
	c.Server = strings.TrimSuffix(c.Server, "/")
	if c.Suffix == "" {
		c.Suffix = u.Hostname()
	}
	c.Suffix = strings.TrimPrefix(c.Suffix, ".")
	if err := wire.ValidID(c.Suffix); err != nil || strings.ContainsAny(c.Suffix, "*?!") {
		return fmt.Errorf("--suffix %q is not a host name suffix: use letters, digits, '.', '_' and '-'", c.Suffix)
	}
	if strings.ContainsAny(c.User, " \t\r\n\"'#") {
		return fmt.Errorf("--user %q is not an SSH user name", c.User)
	}
	if c.Wsproxy == "" || strings.ContainsAny(c.Wsproxy, "\r\n'") {
		return fmt.Errorf("wsproxy path %q cannot be written into an SSH config", c.Wsproxy)
	}
	return nil
}

// markers start and end the block; the server URL in them tells blocks
// of different servers apart.
func (c *SSHConfig) markers() (begin, end string) {
	return "# >>> converge " + c.Server + " (written by wsproxy config-ssh, which rewrites this block)",
		"# <<< converge " + c.Server
}

// Block is the Host block, begin and end markers included, each line
// ending in "\n".
func (c *SSHConfig) Block() string {
	begin, end := c.markers()
	var b strings.Builder
	fmt.Fprintf(&b, "%s\nHost *.%s\n", begin, c.Suffix)
	fmt.Fprintf(&b, "\tProxyCommand %s --host-suffix .%s %s/client/%%n\n", shellQuote(c.Wsproxy), c.Suffix, c.Server)
	if c.User != "" {
		fmt.Fprintf(&b, "\tUser %s\n", c.User)
	}
	fmt.Fprintf(&b, "%s\n", end)
	return b.String()
}

// shellQuote quotes a path for the shell that runs a ProxyCommand.
func shellQuote(s string) string {
	if strings.Trim(s, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789/._-+:@") == "" {
		return s
	}
	return "'" + s + "'"
}

// Apply returns config with the block for c in place: the old block of
// the same server replaced where it stood, or the block appended. Every
// other byte is kept; only a missing final newline is added before an
// appended block. changed is false when config already holds this exact
// block.
func (c *SSHConfig) Apply(config []byte) (out []byte, changed bool, err error) {
	begin, end := c.markers()
	block := []byte(c.Block())
	start, stop, err := findBlock(config, begin, end)
	if err != nil {
		return nil, false, err
	}
	if start < 0 {
		out = append([]byte(nil), config...)
		if len(out) > 0 && out[len(out)-1] != '\n' {
			out = append(out, '\n')
		}
		if len(out) > 0 {
			out = append(out, '\n')
		}
		return append(out, block...), true, nil
	}
	if bytes.Equal(config[start:stop], block) {
		return config, false, nil
	}
	out = append(append(append([]byte(nil), config[:start]...), block...), config[stop:]...)
	return out, true, nil
}

// findBlock finds the lines from begin to end, both included, with the
// end line's newline; start is -1 when there is none.
func findBlock(config []byte, begin, end string) (start, stop int, err error) {
	start, stop = -1, -1
	off := 0
	for _, line := range bytes.SplitAfter(config, []byte("\n")) {
		text := strings.TrimRight(string(line), "\r\n")
		switch {
		case text == begin && start < 0:
			start = off
		case text == end && start >= 0:
			return start, off + len(line), nil
		}
		off += len(line)
	}
	if start >= 0 {
		return -1, -1, errors.New("the SSH config has the start of a converge block but not its end (" + end + "): fix it by hand")
	}
	return -1, -1, nil
}

// WriteSSHConfig puts the block for c into the SSH config file path
// (made with mode 0600, in a 0700 directory, when missing), replacing the
// file atomically; a symlinked config is followed. It reports whether it
// changed anything.
func WriteSSHConfig(path string, c SSHConfig) (bool, error) {
	if err := c.Validate(); err != nil {
		return false, err
	}
	if real, err := filepath.EvalSymlinks(path); err == nil {
		path = real
	}
	old, err := os.ReadFile(path)
	mode := fs.FileMode(0o600)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
			return false, err
		}
	case err != nil:
		return false, err
	default:
		if fi, err := os.Stat(path); err == nil {
			mode = fi.Mode().Perm()
		}
	}
	out, changed, err := c.Apply(old)
	if err != nil || !changed {
		return false, err
	}
	tmp, err := os.CreateTemp(filepath.Dir(path), ".config-converge-*")
	if err != nil {
		return false, err
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.Write(out); err != nil {
		tmp.Close()
		return false, err
	}
	if err := tmp.Chmod(mode); err != nil {
		tmp.Close()
		return false, err
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return false, err
	}
	if err := tmp.Close(); err != nil {
		return false, err
	}
	return true, os.Rename(tmp.Name(), path)
}

// TrimHostSuffix turns the URL a config-ssh ProxyCommand builds from the
// name typed, .../client/ID.SUFFIX, into .../client/ID. A URL whose ID
// lacks the suffix is returned as it is.
func TrimHostSuffix(raw, suffix string) string {
	return strings.TrimSuffix(raw, suffix)
}
