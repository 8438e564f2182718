// Package bench measures Converge against a direct SSH connection: the
// throughput of sftp get, sftp put and ssh cat of a large file, the round
// trip of a small echo inside one ssh session, and the connection setup,
// through the relay (OpenSSH → wsproxy → converge → agent) and straight
// to the same agent's SSH server on a loopback TCP listener, in the same
// run, at 0 ms and at an added round trip. It also measures the relay's
// own CPU per MiB against its targets, the server's memory per idle
// connected agent, the speed of the SSH ciphers, and how hundreds of
// streams at once share one server.
//
// It holds only tests. `make bench` prints the full table (go test
// -run TestBenchTable -bench-table); without -bench-table that test skips,
// and TestBenchSmoke runs the same harness on a tiny file so `go test`
// keeps the harness itself working; TestManyStreamsNoneStalls checks that
// 50 streams at once all finish. TestBenchRelayCPU and TestBenchStreams
// (with -bench-table) measure only their rows. Speeds are measured, never
// asserted.
package bench
