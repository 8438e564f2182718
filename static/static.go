// Package static holds the files the server serves as they are: the style
// sheet, the small script of the sessions view, the icon, the browser
// terminal (its page script, Go's wasm_exec.js, the vendored xterm.js, and
// the WebAssembly SSH client that `make build` builds into term/), and the
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

//go:embed assets dist term vendor/xterm
var files embed.FS

// Assets is the tree of page assets (style.css, sessions.js, icon.svg),
// served under /static/.
var Assets = sub("assets")

// Term is the browser terminal's own files: terminal.js and terminal.css
// (the page's script and style), wasm_exec.js (Go's, from the toolchain
// that builds the client) and webterm.wasm.gz (the SSH client, gzipped),
// which only `make build` puts there.
var Term = sub("term")

// Xterm is xterm.js and its fit addon, vendored unchanged (see
// vendor/xterm/README.md).
var Xterm = sub("vendor/xterm")

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
