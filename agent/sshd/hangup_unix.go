//go:build !windows

package sshd

import (
	"os"
	"os/signal"
	"sync"
	"syscall"
)

// hangupAtDefault makes the processes sessions start get SIGHUP at its
// default action, as OpenSSH's sshd gives them, even when the agent was
// itself started ignoring it (under nohup, or by a runner that does): an
// ignored signal stays ignored across exec, so every process of every
// session would look as if it had asked to outlive its session (see
// ignoresHUP) and be left running when the session ends. A signal the Go
// runtime handles is reset to its default in a child; the agent, which
// never reads the channel (the runtime drops what does not fit), goes on
// ignoring SIGHUP as it was started to. Once per process, and only when
// SIGHUP was ignored: otherwise nothing changes.
var hangupAtDefault = sync.OnceFunc(func() {
	if signal.Ignored(syscall.SIGHUP) {
		signal.Notify(make(chan os.Signal, 1), syscall.SIGHUP)
	}
})
