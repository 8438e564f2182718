package leg

import (
	"time"

	"golang.org/x/sys/windows"
)

// setUserTimeout ends the connection when sent bytes stay unacknowledged
// for d (TCP_MAXRT, in seconds).
func setUserTimeout(fd uintptr, d time.Duration) {
	windows.SetsockoptInt(windows.Handle(fd), windows.IPPROTO_TCP, windows.TCP_MAXRT, int(d.Seconds()))
}
