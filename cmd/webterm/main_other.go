//go:build !(js && wasm)

// Command webterm is the browser terminal's SSH client. It runs only in a
// browser: build it with GOOS=js GOARCH=wasm (make build does).
package main

import (
	"fmt"
	"os"
)

func main() {
	fmt.Fprintln(os.Stderr, "webterm runs in a browser: build it with GOOS=js GOARCH=wasm (make build does), the server serves it at /terminal/ID")
	os.Exit(2)
}
