//go:build !linux && !darwin && !windows

package leg

import "time"

// setUserTimeout: this system has no per-connection user timeout that we
// set; TCP keepalives alone judge the connection.
func setUserTimeout(fd uintptr, d time.Duration) {}
