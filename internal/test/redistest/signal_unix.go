//go:build unix

package redistest

import "syscall"

var terminate = syscall.SIGTERM
