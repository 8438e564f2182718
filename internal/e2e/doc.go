// Package e2e holds the end-to-end tests of every user path: the real
// server and agent on 127.0.0.1:0, the real wsproxy and tcptows binaries,
// and the real OpenSSH ssh, sftp and scp clients. It has no non-test code.
package e2e
