package server

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/http"
	"strings"
	"time"

	"github.com/converge-ci/converge/templates"
)

// Downloadable commands and platforms, in the order the page lists them.
// The Makefile's dist target builds exactly these.
var (
	distCommands  = []string{"agent", "wsproxy", "tcptows"}
	distPlatforms = []struct{ OS, Arch string }{
		{"linux", "amd64"}, {"linux", "arm64"},
		{"darwin", "amd64"}, {"darwin", "arm64"},
		{"windows", "amd64"},
	}
)

// download is one embedded binary.
type download struct {
	name     string // file name in the dist tree: agent-linux-amd64
	command  string
	os, arch string
	size     int64
	sha256   string // hex
}

// catalogue is what the dist tree holds, computed once when the server
// starts: sizes and SHA-256 sums of every binary found under its expected
// name, checked to be an executable of the right kind.
type catalogue struct {
	fsys    fs.FS
	byName  map[string]*download
	list    []*download // page order
	missing []string    // expected names not present (or not executables)
}

// sums maps each binary's file name to its SHA-256 (hex).
func (c *catalogue) sums() map[string]string {
	m := make(map[string]string, len(c.list))
	for _, d := range c.list {
		m[d.name] = d.sha256
	}
	return m
}

func distName(command, goos, arch string) string {
	n := command + "-" + goos + "-" + arch
	if goos == "windows" {
		n += ".exe"
	}
	return n
}

// newCatalogue reads every expected binary in fsys. A missing file is
// noted, not an error: a server built without `make dist` serves the pages
// and says the downloads are absent. A file that is present but not an
// executable for its OS is an error, so a broken build is noticed at start.
func newCatalogue(fsys fs.FS) (*catalogue, error) {
	c := &catalogue{fsys: fsys, byName: make(map[string]*download)}
	for _, cmd := range distCommands {
		for _, p := range distPlatforms {
			name := distName(cmd, p.OS, p.Arch)
			d, err := readDownload(fsys, name)
			if err != nil {
				return nil, err
			}
			if d == nil {
				c.missing = append(c.missing, name)
				continue
			}
			d.command, d.os, d.arch = cmd, p.OS, p.Arch
			c.byName[name] = d
			c.list = append(c.list, d)
		}
	}
	return c, nil
}

func readDownload(fsys fs.FS, name string) (*download, error) {
	f, err := fsys.Open(name)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("open download %s: %w", name, err)
	}
	defer f.Close()
	h := sha256.New()
	var head bytes.Buffer
	n, err := io.Copy(io.MultiWriter(h, &limitedBuffer{&head, 4}), f)
	if err != nil {
		return nil, fmt.Errorf("read download %s: %w", name, err)
	}
	goos := strings.Split(strings.TrimSuffix(name, ".exe"), "-")[1]
	if got := executableKind(head.Bytes()); got != kindFor(goos) {
		return nil, fmt.Errorf("download %s is not a %s executable (found %s); rebuild it with make dist", name, kindFor(goos), got)
	}
	return &download{name: name, size: n, sha256: hex.EncodeToString(h.Sum(nil))}, nil
}

// executableKind names the executable format by its first bytes.
func executableKind(head []byte) string {
	switch {
	case bytes.HasPrefix(head, []byte("\x7fELF")):
		return "ELF"
	case bytes.HasPrefix(head, []byte{0xcf, 0xfa, 0xed, 0xfe}), bytes.HasPrefix(head, []byte{0xce, 0xfa, 0xed, 0xfe}):
		return "Mach-O"
	case bytes.HasPrefix(head, []byte("MZ")):
		return "PE"
	}
	return "unknown format"
}

func kindFor(goos string) string {
	switch goos {
	case "darwin":
		return "Mach-O"
	case "windows":
		return "PE"
	}
	return "ELF"
}

// limitedBuffer keeps the first n bytes written to it.
type limitedBuffer struct {
	b *bytes.Buffer
	n int
}

func (l *limitedBuffer) Write(p []byte) (int, error) {
	if room := l.n - l.b.Len(); room > 0 {
		l.b.Write(p[:min(room, len(p))])
	}
	return len(p), nil
}

// shortName maps the short download URLs used in recipes to the binaries
// they stand for: /static/agent is the Linux amd64 agent, /static/agent.exe
// the Windows one.
func shortName(name string) (string, bool) {
	for _, cmd := range distCommands {
		switch name {
		case cmd:
			return distName(cmd, "linux", "amd64"), true
		case cmd + ".exe":
			return distName(cmd, "windows", "amd64"), true
		}
	}
	return "", false
}

// serve writes the binary name, or a plain explanation when this server
// has no such download.
func (c *catalogue) serve(w http.ResponseWriter, r *http.Request, name string) {
	d := c.byName[name]
	if d == nil {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		w.Header().Set("X-Content-Type-Options", "nosniff")
		w.WriteHeader(http.StatusNotFound)
		if len(c.list) == 0 {
			cmd, _, _ := strings.Cut(name, "-")
			fmt.Fprintf(w, "%s is not available: this server was built without the downloadable binaries.\n"+
				"Its operator can embed them with `make dist`; meanwhile build %s from source: go build ./cmd/%s\n",
				name, cmd, cmd)
			return
		}
		fmt.Fprintf(w, "%s is not among this server's downloads; see /downloads for the list.\n", name)
		return
	}
	f, err := c.fsys.Open(name)
	if err != nil {
		http.Error(w, "download unavailable: "+err.Error(), http.StatusInternalServerError)
		return
	}
	defer f.Close()
	rs, ok := f.(io.ReadSeeker)
	if !ok {
		http.Error(w, "download unavailable: file is not seekable", http.StatusInternalServerError)
		return
	}
	h := w.Header()
	h.Set("Content-Type", "application/octet-stream")
	h.Set("Content-Disposition", `attachment; filename="`+d.name+`"`)
	h.Set("ETag", `"`+d.sha256+`"`)
	h.Set("Cache-Control", "no-cache")
	http.ServeContent(w, r, "", time.Time{}, rs)
}

// views lists the downloads for the page.
func (c *catalogue) views(base string) (rows []templates.Download, missing []string) {
	for _, d := range c.list {
		short := ""
		if d.os == "linux" && d.arch == "amd64" {
			short = base + "/static/" + d.command
		} else if d.os == "windows" {
			short = base + "/static/" + d.command + ".exe"
		}
		rows = append(rows, templates.Download{
			Command: d.command, OS: d.os, Arch: d.arch, Name: d.name,
			URL: base + "/static/dist/" + d.name, ShortURL: short,
			Size: d.size, SHA256: d.sha256,
		})
	}
	return rows, c.missing
}
