package leg

import (
	"time"

	"golang.org/x/sys/unix"
)

// setUserTimeout ends the connection when sent bytes stay unacknowledged
// for d (TCP_USER_TIMEOUT).
func setUserTimeout(fd uintptr, d time.Duration) {
	unix.SetsockoptInt(int(fd), unix.IPPROTO_TCP, unix.TCP_USER_TIMEOUT, int(d.Milliseconds()))
}
