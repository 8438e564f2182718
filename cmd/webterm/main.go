//go:build js && wasm

// Command webterm is the browser terminal's SSH client, compiled to
// WebAssembly (GOOS=js GOARCH=wasm) by `make build` and served by the
// server with the /terminal/ID page, which runs it. It only installs the
// API of package webterm for the page's script, then waits for the page
// to go away.
package main

import "github.com/converge-ci/converge/webterm"

func main() {
	webterm.Export()
	select {}
}
