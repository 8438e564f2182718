package wsproxy

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestSSHConfigKeepsOtherLines: writing the block twice changes nothing
// the second time; every byte outside the block stays, whatever its line
// endings; a changed block is rewritten where it stood; another server's
// block is left alone.
func TestSSHConfigKeepsOtherLines(t *testing.T) {
	c := SSHConfig{Server: "wss://converge.example.com", User: "ci", Wsproxy: "/usr/local/bin/wsproxy"}
	other := SSHConfig{Server: "ws://10.0.0.1:8080", Suffix: "lab", Wsproxy: "/opt/my tools/wsproxy"}
	for _, v := range []*SSHConfig{&c, &other} {
		if err := v.Validate(); err != nil {
			t.Fatal(err)
		}
	}
	for _, before := range []string{
		"",
		"Host gh\n\tHostName github.com\n",
		"# no final newline\r\nHost *\r\n  ServerAliveInterval 30",
		"Include ~/.ssh/conf.d/*\n\n\n" + other.Block() + "Host x\n  User y\n",
	} {
		once, changed, err := c.Apply([]byte(before))
		if err != nil || !changed {
			t.Fatalf("Apply to %q: changed %v, %v", before, changed, err)
		}
		if !strings.HasPrefix(string(once), before) || !strings.Contains(string(once), c.Block()) {
			t.Errorf("Apply to %q gave %q: want the old bytes then the block", before, once)
		}
		twice, changed, err := c.Apply(once)
		if err != nil || changed || string(twice) != string(once) {
			t.Errorf("second Apply to %q: changed %v, %v; output differs: %v", before, changed, err, string(twice) != string(once))
		}
		// A new user: the block is rewritten in place, the rest kept.
		c2 := c
		c2.User = "other"
		moved, changed, err := c2.Apply(append(once, "Host after\n  Port 2\n"...))
		if err != nil || !changed {
			t.Fatalf("Apply of a changed block: %v, %v", changed, err)
		}
		want := strings.Replace(string(once)+"Host after\n  Port 2\n", c.Block(), c2.Block(), 1)
		if string(moved) != want {
			t.Errorf("rewritten block:\n%q\nwant:\n%q", moved, want)
		}
	}
	if !strings.Contains(other.Block(), "ProxyCommand '/opt/my tools/wsproxy' --host-suffix .lab ws://10.0.0.1:8080/client/%n\n") {
		t.Errorf("block with a quoted path:\n%s", other.Block())
	}
	if _, _, err := c.Apply([]byte("# >>> converge wss://converge.example.com (written by wsproxy config-ssh, which rewrites this block)\nHost a\n")); err == nil {
		t.Error("a block without its end was accepted")
	}
}

func TestSSHConfigValidate(t *testing.T) {
	for _, c := range []SSHConfig{
		{Server: "https://x", Wsproxy: "/w"},
		{Server: "wss://", Wsproxy: "/w"},
		{Server: "wss://x", Suffix: "a*b", Wsproxy: "/w"},
		{Server: "wss://x", User: "a b", Wsproxy: "/w"},
		{Server: "wss://x", Wsproxy: ""},
	} {
		if err := c.Validate(); err == nil {
			t.Errorf("Validate(%+v) accepted it", c)
		}
	}
	c := SSHConfig{Server: "wss://converge.example.com:8443/", Wsproxy: "/w"}
	if err := c.Validate(); err != nil || c.Suffix != "converge.example.com" || c.Server != "wss://converge.example.com:8443" {
		t.Errorf("Validate: %v; suffix %q, server %q", err, c.Suffix, c.Server)
	}
}

// TestWriteSSHConfig: the file is made 0600 in a new 0700 directory, a
// symlinked config is written through, and its mode kept.
func TestWriteSSHConfig(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, ".ssh", "config")
	c := SSHConfig{Server: "wss://converge.example.com", Wsproxy: "/w"}
	if changed, err := WriteSSHConfig(path, c); err != nil || !changed {
		t.Fatalf("first write: %v, %v", changed, err)
	}
	if changed, err := WriteSSHConfig(path, c); err != nil || changed {
		t.Fatalf("second write: %v, %v", changed, err)
	}
	if fi, _ := os.Stat(path); fi.Mode().Perm() != 0o600 {
		t.Errorf("config mode %v", fi.Mode().Perm())
	}
	if fi, _ := os.Stat(filepath.Dir(path)); fi.Mode().Perm() != 0o700 {
		t.Errorf("~/.ssh mode %v", fi.Mode().Perm())
	}
	real := filepath.Join(dir, "dotfiles-config")
	os.WriteFile(real, []byte("Host a\n"), 0o640)
	link := filepath.Join(dir, "link")
	os.Symlink(real, link)
	if _, err := WriteSSHConfig(link, c); err != nil {
		t.Fatal(err)
	}
	got, _ := os.ReadFile(real)
	if fi, _ := os.Lstat(link); fi.Mode()&os.ModeSymlink == 0 || !strings.HasPrefix(string(got), "Host a\n\n# >>> converge") {
		t.Errorf("through a symlink: link kept %v, file %q", fi.Mode()&os.ModeSymlink != 0, got)
	}
	if fi, _ := os.Stat(real); fi.Mode().Perm() != 0o640 {
		t.Errorf("mode of the linked file %v, want 0640 kept", fi.Mode().Perm())
	}
}

func TestTrimHostSuffix(t *testing.T) {
	for _, c := range [][3]string{
		{"wss://h/client/myjob.h", ".h", "wss://h/client/myjob"},
		{"wss://h/client/myjob", ".h", "wss://h/client/myjob"},
		{"wss://h/client/a.b.lab", ".lab", "wss://h/client/a.b"},
		{"wss://h/client/x", "", "wss://h/client/x"},
	} {
		if got := TrimHostSuffix(c[0], c[1]); got != c[2] {
			t.Errorf("TrimHostSuffix(%q, %q) = %q, want %q", c[0], c[1], got, c[2])
		}
	}
}
