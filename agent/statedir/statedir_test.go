package statedir

import (
	"errors"
	"os"
	"path/filepath"
	"runtime"
	"testing"
)

func TestChoose(t *testing.T) {
	for _, tc := range []struct {
		override string
		env      map[string]string
		want     string
	}{
		{"/x", map[string]string{"RUNNER_TEMP": "/rt"}, "/x"},
		{"", map[string]string{"RUNNER_TEMP": "/rt", "XDG_STATE_HOME": "/xdg"}, "/rt/converge-job"},
		{"", map[string]string{"XDG_STATE_HOME": "/xdg"}, "/xdg/converge/job"},
		{"", nil, "/work/.converge/job"},
	} {
		got := Choose(tc.override, "job", "/work", func(k string) string { return tc.env[k] })
		if got != tc.want {
			t.Errorf("Choose(%q, env %v) = %q, want %q", tc.override, tc.env, got, tc.want)
		}
	}
}

func TestMakePrivate(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "a", "state")
	got, err := Make(dir)
	if err != nil {
		t.Fatal(err)
	}
	fi, err := os.Lstat(got)
	if err != nil || fi.Mode().Perm() != 0o700 || !fi.IsDir() {
		t.Fatalf("Make(%s): mode %v, err %v; want a 0700 folder", dir, fi.Mode(), err)
	}
	os.Chmod(got, 0o755)
	if _, err := Make(dir); err != nil {
		t.Fatal(err)
	}
	if fi, _ := os.Lstat(got); fi.Mode().Perm() != 0o700 {
		t.Errorf("a 0755 state folder stayed %v, want 0700", fi.Mode().Perm())
	}
}

func TestMakeRefusesSymlink(t *testing.T) {
	base := t.TempDir()
	target := filepath.Join(base, "elsewhere")
	os.Mkdir(target, 0o700)
	link := filepath.Join(base, "state")
	if err := os.Symlink(target, link); err != nil {
		t.Fatal(err)
	}
	if _, err := Make(link); !errors.Is(err, ErrUnsafe) {
		t.Errorf("Make(symlink) = %v, want ErrUnsafe", err)
	}
}

func TestCreateDoesNotFollow(t *testing.T) {
	dir, err := Make(filepath.Join(t.TempDir(), "s"))
	if err != nil {
		t.Fatal(err)
	}
	victim := filepath.Join(t.TempDir(), "victim")
	os.WriteFile(victim, []byte("keep"), 0o600)
	os.Symlink(victim, filepath.Join(dir, "journal.jsonl"))
	f, err := Create(dir, "journal.jsonl", 0o600)
	if err != nil {
		t.Fatal(err)
	}
	f.WriteString("new")
	f.Close()
	if b, _ := os.ReadFile(victim); string(b) != "keep" {
		t.Errorf("the symlink's target was written: %q", b)
	}
}

func TestWarnings(t *testing.T) {
	if runtime.GOOS == "windows" {
		t.Skip("modes are ACLs on Windows")
	}
	for _, tc := range []struct {
		parent, dir os.FileMode // dir 0: not there yet
		want        int
	}{
		{0o755, 0, 0},
		{0o755, 0o700, 0},
		{0o755, 0o777, 1},
		{0o777 | os.ModeSticky, 0, 0},
		{0o777, 0, 1},
		{0o777, 0o757, 2},
	} {
		parent := filepath.Join(t.TempDir(), "parent")
		dir := filepath.Join(parent, "state")
		if err := os.Mkdir(parent, 0o700); err != nil {
			t.Fatal(err)
		}
		if tc.dir != 0 {
			if err := os.Mkdir(dir, 0o700); err != nil {
				t.Fatal(err)
			}
			if err := os.Chmod(dir, tc.dir); err != nil {
				t.Fatal(err)
			}
		}
		if err := os.Chmod(parent, tc.parent); err != nil {
			t.Fatal(err)
		}
		if got := Warnings(dir); len(got) != tc.want {
			t.Errorf("parent %v, folder %v: warnings %q, want %d", tc.parent, tc.dir, got, tc.want)
		}
	}
}
