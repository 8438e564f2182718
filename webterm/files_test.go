//go:build !js

package webterm

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"io"
	"os"
	"path/filepath"
	"testing"

	"github.com/converge-ci/converge/agent"
)

// TestUploadDownload: files go over SFTP on the session's connection:
// into the shell's directory or, with none, the start directory; a file
// that exists is refused, replaced or kept beside; a cancelled upload
// leaves nothing; a download returns the same bytes.
func TestUploadDownload(t *testing.T) {
	var dir string
	r := newRig(t, func(c *agent.Config) { dir = c.Dir })
	s := start(t, r.dialer(nil), r.config(t))
	watch(s) // the shell's output must be read for Close to end
	ctx := context.Background()

	sub := filepath.Join(dir, "sub")
	if err := os.Mkdir(sub, 0o755); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		cwd, want string
		fallback  bool
	}{{sub, sub, false}, {"", dir, true}, {filepath.Join(dir, "gone"), dir, true}, {"relative", dir, true}} {
		got, fallback, err := s.UploadDir(c.cwd)
		if err != nil || got != c.want || fallback != c.fallback {
			t.Errorf("UploadDir(%q) = %q, %v, %v; want %q, %v", c.cwd, got, fallback, err, c.want, c.fallback)
		}
	}

	data := make([]byte, 3<<20+17)
	rand.Read(data)
	var last int64
	p, err := s.Upload(ctx, bytes.NewReader(data), sub, "a.bin", ConflictAsk, func(n int64) { last = n })
	if err != nil || p != filepath.Join(sub, "a.bin") {
		t.Fatalf("Upload = %q, %v", p, err)
	}
	if got, _ := os.ReadFile(p); !bytes.Equal(got, data) || last != int64(len(data)) {
		t.Errorf("uploaded %d bytes (progress said %d), want the %d sent", len(got), last, len(data))
	}

	var exists *ExistsError
	if _, err := s.Upload(ctx, bytes.NewReader([]byte("x")), sub, "a.bin", ConflictAsk, nil); !errors.As(err, &exists) {
		t.Errorf("second upload with ask: %v, want *ExistsError", err)
	}
	if p, err := s.Upload(ctx, bytes.NewReader([]byte("both")), sub, "a.bin", ConflictKeepBoth, nil); err != nil || p != filepath.Join(sub, "a (1).bin") {
		t.Errorf("keep both = %q, %v; want a (1).bin", p, err)
	}
	if _, err := s.Upload(ctx, bytes.NewReader([]byte("new")), sub, "a.bin", ConflictReplace, nil); err != nil {
		t.Errorf("replace: %v", err)
	}
	if got, _ := os.ReadFile(filepath.Join(sub, "a.bin")); string(got) != "new" {
		t.Errorf("after replace a.bin holds %q", got)
	}
	if _, err := s.Upload(ctx, bytes.NewReader(nil), sub, "../x", ConflictAsk, nil); err == nil {
		t.Error("a name with a slash was accepted")
	}

	// Cancelled half way: nothing is left behind.
	cctx, cancel := context.WithCancel(ctx)
	half := io.MultiReader(bytes.NewReader(data[:1<<20]), readerFunc(func([]byte) (int, error) { cancel(); return 0, io.ErrNoProgress }))
	if _, err := s.Upload(cctx, half, sub, "cut.bin", ConflictAsk, nil); !errors.Is(err, context.Canceled) {
		t.Errorf("cancelled upload: %v, want context.Canceled", err)
	}
	if ents, _ := os.ReadDir(sub); len(ents) != 2 {
		var names []string
		for _, e := range ents {
			names = append(names, e.Name())
		}
		t.Errorf("after a cancelled upload the directory holds %q, want a.bin and a (1).bin", names)
	}

	if err := os.WriteFile(filepath.Join(dir, "d.bin"), data, 0o644); err != nil {
		t.Fatal(err)
	}
	fi, err := s.StatFile("d.bin")
	if err != nil || fi.Path != filepath.Join(dir, "d.bin") || fi.Size != int64(len(data)) || fi.Name != "d.bin" {
		t.Fatalf("StatFile = %+v, %v", fi, err)
	}
	if _, err := s.StatFile(sub); err == nil {
		t.Error("StatFile of a directory succeeded")
	}
	var got bytes.Buffer
	if n, err := s.Download(ctx, fi.Path, &got, nil); err != nil || n != int64(len(data)) || !bytes.Equal(got.Bytes(), data) {
		t.Errorf("Download = %d, %v; same bytes %v", n, err, bytes.Equal(got.Bytes(), data))
	}
}

type readerFunc func([]byte) (int, error)

func (f readerFunc) Read(p []byte) (int, error) { return f(p) }
