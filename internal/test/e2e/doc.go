// Package e2e holds the end-to-end tests of every user path: the real
// server and agent on 127.0.0.1:0, the real wsproxy and tcptows binaries,
// and the real OpenSSH ssh, sftp and scp clients. It has no non-test code.
//
// A test that uses only its own server, agent and temporary directories
// calls t.Parallel. Tests that set the process's environment (in-process
// agents pass it to their sessions) or depend on timings of a few seconds
// (the session lifetime) run alone.
package e2e
