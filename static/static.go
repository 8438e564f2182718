// Package static holds the files the server serves as they are: the style
// sheet, the small script of the sessions view, the icon, and the
// downloadable binaries that `make dist` builds into dist/. Everything is
// embedded in the server binary, so the server needs no CDN and no files
// beside it.
//
// It is not a place for code: it only exposes the embedded trees.
package static

import (
	"embed"
	"io/fs"
)

//go:embed assets dist
var files embed.FS

// Assets is the tree of page assets (style.css, sessions.js, icon.svg),
// served under /static/.
var Assets = sub("assets")

// Dist is the tree of downloadable binaries, named NAME-OS-ARCH with .exe
// for Windows (agent-linux-amd64, wsproxy-windows-amd64.exe). In a server
// built without `make dist` it holds only a README.txt.
var Dist = sub("dist")

func sub(dir string) fs.FS {
	f, err := fs.Sub(files, dir)
	if err != nil {
		panic(err) // dir is one of the embedded directories above
	}
	return f
}
