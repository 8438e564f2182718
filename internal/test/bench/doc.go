// Package bench measures Converge against a direct SSH connection: the
// throughput of sftp get, sftp put and ssh cat of a large file, the round
// trip of a small echo inside one ssh session, and the connection setup,
// through the relay (OpenSSH → wsproxy → converge → agent) and straight
// to the same agent's SSH server on a loopback TCP listener, in the same
// run, at 0 ms and at an added round trip. It also measures the relay's
// own CPU per MiB against its targets, the speed of the SSH ciphers, how
// hundreds of streams at once share one server and, with 10,000
// synthetic agents (internal/test/loadgen), the server's memory per idle
// agent, its lookups per second, and how the agents come back after it
// is killed and restarted while clients keep asking it things.
//
// It holds only tests. `make bench` prints the full table (go test
// -run TestBenchTable -bench-table); `make bench-agents`,
// `make bench-connect`, `make bench-relay` and `make bench-streams` print
// only their rows (TestBenchAgents, TestBenchConnect, TestBenchRelayCPU,
// TestBenchStreams). Without -bench-table those tests skip;
// TestBenchSmoke runs the same harness on a tiny file and 20 agents so
// `go test` keeps the harness itself working, and
// TestManyStreamsNoneStalls checks that 50 streams at once all finish.
// Speeds are measured, never asserted. The test binary also serves as
// the agents' and clients' processes of the many-agents rows (see
// TestMain).
package bench
