//go:build windows

package wsproxy

import "os"

// OpenStdio returns the process's stdin and stdout.
func OpenStdio() (in, out *os.File) { return os.Stdin, os.Stdout }
