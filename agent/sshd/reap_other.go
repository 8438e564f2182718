//go:build !linux

package sshd

import "context"

// reapOrphans does nothing here: orphans are reaped on Linux only, where
// an agent may be PID 1 of a container.
func (c *children) reapOrphans(context.Context) {}
