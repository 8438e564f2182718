//go:build !linux

package server

import "errors"

// idlePoller is Linux only (epoll): elsewhere every agent waits on a
// goroutine of its own (see frameGate).
type idlePoller struct{}

func newIdlePoller() (*idlePoller, error) { return nil, errors.New("no idle poller here") }

func (p *idlePoller) stop()                {}
func (p *idlePoller) park(*agentConn) bool { return false }
func (p *idlePoller) take(*agentConn) bool { return false }
