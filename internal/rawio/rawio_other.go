//go:build !linux

package rawio

import "syscall"

func check(syscall.RawConn) error { return errNotRaw }

// Read is never called: For returns no FD on this system.
func (f *FD) Read(p []byte) (int, error) { return 0, errNotRaw }

// Write is never called: For returns no FD on this system.
func (f *FD) Write(p []byte) (int, error) { return 0, errNotRaw }
