//go:build !unix

package cli

// RaiseFileLimit does nothing where there is no per-process limit on file
// descriptors to raise (Windows handles are bounded by memory): it returns
// 0, meaning no limit is known.
func RaiseFileLimit() (uint64, error) { return 0, nil }
