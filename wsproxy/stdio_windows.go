//go:build windows

package wsproxy

import "os"

// OpenStdio returns the process's stdin and stdout.
func OpenStdio() (in, out *os.File) { return os.Stdin, os.Stdout }

// ReleaseStderr does nothing on Windows, where a process's inherited
// standard handles do not hold up the program that waits for its parent.
func ReleaseStderr() {}
