//go:build !unix

package server

import (
	"net"
	"syscall"
)

// rawOf is nil here: the control loop waits inside the WebSocket read
// (see frameGate).
func rawOf(net.Conn) syscall.RawConn { return nil }

func readable(uintptr) bool { return true }
