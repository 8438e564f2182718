// Package testnet gives tests real network connections on the loopback
// interface. It is for tests only, and holds no fakes: every connection is
// a kernel socket.
package testnet

import (
	"net"
	"testing"
)

// TCPPair returns the two ends of one TCP connection on 127.0.0.1: the
// dialled end, then the accepted end. Both are closed when the test ends.
func TCPPair(t testing.TB) (net.Conn, net.Conn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	accepted := make(chan net.Conn, 1)
	go func() {
		c, _ := ln.Accept()
		accepted <- c
	}()
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	s := <-accepted
	if s == nil {
		c.Close()
		t.Fatal("accept failed")
	}
	t.Cleanup(func() { c.Close(); s.Close() })
	return c, s
}
