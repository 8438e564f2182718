package webterm

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"strings"

	"github.com/pkg/sftp"
)

// Files move over SFTP on the session's own SSH connection, so they cross
// the relay inside SSH like the shell's bytes. The SFTP channel opens on
// first use.

// Conflict says what Upload does when the file already exists.
type Conflict int

const (
	// ConflictAsk fails with an *ExistsError, so the page can ask.
	ConflictAsk Conflict = iota
	// ConflictReplace replaces the file.
	ConflictReplace
	// ConflictKeepBoth uploads under a free name: "a (1).txt".
	ConflictKeepBoth
)

// ExistsError: the upload's target exists and Upload was told to ask.
type ExistsError struct{ Path string }

func (e *ExistsError) Error() string { return e.Path + " already exists in the job" }

// uploadConcurrency is how many SFTP writes are in flight: 64 × 32 KiB,
// the 2 MiB of SSH's channel window.
const uploadConcurrency = 64

// files returns the session's SFTP client, opening it on first use.
func (s *Session) files() (*sftp.Client, error) {
	s.sftpMu.Lock()
	defer s.sftpMu.Unlock()
	if s.sftp != nil {
		return s.sftp, nil
	}
	c, err := sftp.NewClient(s.client,
		sftp.UseConcurrentWrites(true),
		sftp.MaxConcurrentRequestsPerFile(uploadConcurrency))
	if err != nil {
		return nil, fmt.Errorf("open SFTP on the session's connection: %w", err)
	}
	s.sftp = c
	return c, nil
}

// UploadDir is where an upload goes: cwd (the shell's directory, as OSC 7
// reported it) when it is a directory in the job, else SFTP's working
// directory (where sessions start), and then fallback is true.
func (s *Session) UploadDir(cwd string) (dir string, fallback bool, err error) {
	c, err := s.files()
	if err != nil {
		return "", false, err
	}
	if cwd != "" && path.IsAbs(cwd) {
		if fi, err := c.Stat(cwd); err == nil && fi.IsDir() {
			return cwd, false, nil
		}
	}
	wd, err := c.Getwd()
	if err != nil {
		return "", false, fmt.Errorf("find the session's directory: %w", err)
	}
	return wd, true, nil
}

// checkName refuses names that are not one plain file name.
func checkName(name string) error {
	if name == "" || name == "." || name == ".." || strings.ContainsAny(name, "/\x00") {
		return fmt.Errorf("%q is not a file name", name)
	}
	return nil
}

// Upload copies src into dir/name in the job and returns the path it
// wrote. It writes a hidden temporary file first and renames it into
// place, so a cancelled or failed upload (ctx, or src failing) leaves
// nothing behind. progress, when set, is called with the bytes read so
// far, every MiB and at the end. The target's existence is checked before and after the copy;
// between the last check and the rename a file made by someone else
// would be replaced (SFTP has no rename-unless-exists).
func (s *Session) Upload(ctx context.Context, src io.Reader, dir, name string, how Conflict, progress func(int64)) (string, error) {
	if err := checkName(name); err != nil {
		return "", err
	}
	c, err := s.files()
	if err != nil {
		return "", err
	}
	target, err := pickTarget(c, dir, name, how)
	if err != nil {
		return "", err
	}
	tmp := path.Join(dir, "."+name+".upload-"+randomHex())
	f, err := c.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_EXCL)
	if err != nil {
		return "", fmt.Errorf("create %s in the job: %w", tmp, err)
	}
	r := &countingReader{ctx: ctx, r: src, progress: progress}
	_, err = f.ReadFromWithConcurrency(r, uploadConcurrency)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		target, err = finishUpload(c, tmp, dir, name, target, how)
	}
	if err != nil {
		c.Remove(tmp)
		if ctx.Err() != nil {
			return "", ctx.Err()
		}
		return "", fmt.Errorf("upload %s: %w", name, err)
	}
	return target, nil
}

// pickTarget is the path Upload writes, given what exists.
func pickTarget(c *sftp.Client, dir, name string, how Conflict) (string, error) {
	target := path.Join(dir, name)
	_, err := c.Lstat(target)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return target, nil
	case err != nil:
		return "", fmt.Errorf("look for %s in the job: %w", target, err)
	case how == ConflictReplace:
		return target, nil
	case how == ConflictKeepBoth:
		return freeName(c, dir, name)
	}
	return "", &ExistsError{Path: target}
}

// finishUpload renames the finished temporary file into place.
func finishUpload(c *sftp.Client, tmp, dir, name, target string, how Conflict) (string, error) {
	if how == ConflictReplace {
		return target, c.PosixRename(tmp, target)
	}
	// Someone may have made the file meanwhile: look again.
	target, err := pickTarget(c, dir, name, how)
	if err != nil {
		return "", err
	}
	return target, c.Rename(tmp, target)
}

// freeName finds "stem (n).ext" that does not exist in dir.
func freeName(c *sftp.Client, dir, name string) (string, error) {
	ext := path.Ext(name)
	stem := strings.TrimSuffix(name, ext)
	if stem == "" { // ".bashrc"
		stem, ext = name, ""
	}
	for n := 1; n < 1000; n++ {
		p := path.Join(dir, fmt.Sprintf("%s (%d)%s", stem, n, ext))
		if _, err := c.Lstat(p); errors.Is(err, fs.ErrNotExist) {
			return p, nil
		}
	}
	return "", fmt.Errorf("no free name for %s in %s", name, dir)
}

func randomHex() string {
	b := make([]byte, 6)
	rand.Read(b)
	return hex.EncodeToString(b)
}

// FileInfo is what the page needs of a file to download.
type FileInfo struct {
	Path string // absolute, in the job
	Name string // base name
	Size int64
}

// StatFile resolves p (relative to the session's start directory) and
// checks that it is a regular file.
func (s *Session) StatFile(p string) (FileInfo, error) {
	c, err := s.files()
	if err != nil {
		return FileInfo{}, err
	}
	if !path.IsAbs(p) {
		wd, err := c.Getwd()
		if err != nil {
			return FileInfo{}, fmt.Errorf("find the session's directory: %w", err)
		}
		p = path.Join(wd, p)
	}
	fi, err := c.Stat(p)
	if err != nil {
		return FileInfo{}, fmt.Errorf("%s in the job: %w", p, err)
	}
	if !fi.Mode().IsRegular() {
		return FileInfo{}, fmt.Errorf("%s in the job is not a regular file", p)
	}
	return FileInfo{Path: path.Clean(p), Name: path.Base(p), Size: fi.Size()}, nil
}

// Download copies the job's file p to dst, streaming: what is in flight
// is bounded by SFTP's concurrent reads, never the whole file. progress,
// when set, is called with the bytes written so far, every MiB and at the
// end. It stops when ctx
// is done.
func (s *Session) Download(ctx context.Context, p string, dst io.Writer, progress func(int64)) (int64, error) {
	c, err := s.files()
	if err != nil {
		return 0, err
	}
	f, err := c.Open(p)
	if err != nil {
		return 0, fmt.Errorf("open %s in the job: %w", p, err)
	}
	defer f.Close()
	cw := &countingWriter{ctx: ctx, w: dst, progress: progress}
	n, err := f.WriteTo(cw)
	if progress != nil && cw.told != n {
		progress(n)
	}
	if ctx.Err() != nil {
		return n, ctx.Err()
	}
	if err != nil {
		return n, fmt.Errorf("download %s: %w", p, err)
	}
	return n, nil
}

// countingReader reads src until ctx is done, reporting progress.
type countingReader struct {
	ctx      context.Context
	r        io.Reader
	n, told  int64 // read, and last reported
	progress func(int64)
}

func (c *countingReader) Read(p []byte) (int, error) {
	if err := c.ctx.Err(); err != nil {
		return 0, err
	}
	n, err := c.r.Read(p)
	c.n += int64(n)
	c.report(err != nil)
	return n, err
}

// progressStep is how many bytes pass between two progress reports: a
// report per 32 KiB packet would cost the page more than the bytes do.
const progressStep = 1 << 20

func (c *countingReader) report(last bool) {
	if c.progress != nil && (c.n-c.told >= progressStep || last && c.n != c.told) {
		c.told = c.n
		c.progress(c.n)
	}
}

// countingWriter writes to w until ctx is done, reporting progress.
type countingWriter struct {
	ctx      context.Context
	w        io.Writer
	n, told  int64 // written, and last reported
	progress func(int64)
}

func (c *countingWriter) Write(p []byte) (int, error) {
	if err := c.ctx.Err(); err != nil {
		return 0, err
	}
	n, err := c.w.Write(p)
	c.n += int64(n)
	if c.progress != nil && c.n-c.told >= progressStep {
		c.told = c.n
		c.progress(c.n)
	}
	return n, err
}
