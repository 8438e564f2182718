package leg

import (
	"syscall"
	"time"
)

// setUserTimeout ends the connection when sent bytes stay unacknowledged
// for d (TCP_RXT_CONNDROPTIME, in seconds).
func setUserTimeout(fd uintptr, d time.Duration) {
	syscall.SetsockoptInt(int(fd), syscall.IPPROTO_TCP, syscall.TCP_RXT_CONNDROPTIME, int(d.Seconds()))
}
