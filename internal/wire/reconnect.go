package wire

import (
	"math/rand/v2"
	"time"
)

// The agents' reconnect schedule, part of their contract with the server:
// how a fleet of agents arrives after a restart. The agent follows it, and
// so does the load generator that stands in for thousands of agents.
//
// Backoff doubles from ReconnectMin to ReconnectMax, each wait jittered
// down by up to half (Jitter) so a fleet does not reconnect in step. The
// cap is low on purpose: after a server restart every agent is back within
// ReconnectMax of the server being up, and a refused TCP connect costs the
// server next to nothing.
//
// The first attempt after a registered link ended is spread evenly over
// ReconnectSpread instead (Spread): when a server restarts, all its agents
// lose their links at once, and without the spread they would return
// within 125 ms of each other and hold up the clients behind them
// (measured with 10,000 agents: client p99 169 ms with the old schedule,
// see docs/design.md). A link that blips costs its agent half of it on
// average; resumable sessions do not notice.
const (
	ReconnectMin    = 250 * time.Millisecond
	ReconnectMax    = 4 * time.Second
	ReconnectSpread = 2 * time.Second
)

// Jitter returns a wait between half of backoff and backoff, at random.
func Jitter(backoff time.Duration) time.Duration {
	return backoff/2 + rand.N(backoff/2+1)
}

// Spread returns a wait between 0 and spread, at random.
func Spread(spread time.Duration) time.Duration {
	return rand.N(spread + 1)
}
