package cli

import (
	"bytes"
	"errors"
	"strings"
	"testing"
	"time"
)

func TestEnvTwins(t *testing.T) {
	c := New("x", "x [flags]", "summary")
	var addr, user string
	var d time.Duration
	var list StringList
	c.Flags.StringVar(&addr, "addr", ":8000", "address")
	c.Flags.StringVar(&user, "ssh-user", "converge", "user")
	c.Flags.DurationVar(&d, "expiry", time.Minute, "expiry")
	c.Flags.Var(&list, "key-url", "urls")
	t.Setenv("CONVERGE_ADDR", ":9000")
	t.Setenv("CONVERGE_SSH_USER", "fromenv")
	t.Setenv("CONVERGE_EXPIRY", "90s")
	t.Setenv("CONVERGE_KEY_URL", "a, b")
	if err := c.Parse([]string{"--ssh-user", "fromflag"}); err != nil {
		t.Fatal(err)
	}
	if addr != ":9000" || user != "fromflag" || d != 90*time.Second || list.String() != "a,b" {
		t.Errorf("got addr=%q user=%q expiry=%v list=%q; want env for unset flags, flag over env", addr, user, d, list.String())
	}
}

func TestEnvTwinBadValue(t *testing.T) {
	c := New("x", "x", "s")
	var d time.Duration
	c.Flags.DurationVar(&d, "expiry", time.Minute, "expiry")
	t.Setenv("CONVERGE_EXPIRY", "soon")
	err := c.Parse(nil)
	if err == nil || !strings.Contains(err.Error(), "CONVERGE_EXPIRY") {
		t.Fatalf("Parse = %v, want an error naming CONVERGE_EXPIRY", err)
	}
}

func TestHelpAndVersion(t *testing.T) {
	c := New("x", "x [flags]", "Does x.")
	var out bytes.Buffer
	c.Flags.SetOutput(&out)
	c.Flags.String("ssh-user", "converge", "the user")
	if err := c.Parse([]string{"--help"}); !errors.Is(err, ErrExit) {
		t.Fatalf("--help: %v, want ErrExit", err)
	}
	for _, want := range []string{"Usage: x [flags]", "Does x.", "--ssh-user", "default converge; env CONVERGE_SSH_USER"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("help lacks %q:\n%s", want, out.String())
		}
	}
	out.Reset()
	if err := c.Parse([]string{"--version"}); !errors.Is(err, ErrExit) || !strings.HasPrefix(out.String(), "x ") {
		t.Errorf("--version: %v %q", err, out.String())
	}
}

// TestEnvTwinRenamed: Command.Env gives a flag another twin, which Parse
// reads and --help names; the default name then means nothing to it.
func TestEnvTwinRenamed(t *testing.T) {
	c := New("x", "x", "s")
	c.Env = map[string]string{"keys": "CONVERGE_KEYS_FILE"}
	var keys string
	c.Flags.StringVar(&keys, "keys", "", "key files")
	t.Setenv("CONVERGE_KEYS", "ignored")
	t.Setenv("CONVERGE_KEYS_FILE", "k.txt")
	if err := c.Parse(nil); err != nil || keys != "k.txt" {
		t.Fatalf("Parse = %v, keys %q; want k.txt from CONVERGE_KEYS_FILE", err, keys)
	}
	var help strings.Builder
	c.PrintHelp(&help)
	if !strings.Contains(help.String(), "env CONVERGE_KEYS_FILE") || strings.Contains(help.String(), "env CONVERGE_KEYS)") {
		t.Errorf("help names the wrong twin:\n%s", help.String())
	}
}
