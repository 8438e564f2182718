package policy

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"
)

// Quota bounds the agents registered at once for one repository
// (Identity.Repository): hosted runners share addresses, so a cap per
// address is the wrong unit there. Agents without a repository (open or
// shared-token policies) are not counted. With a Redis the count is
// shared by every replica; an agent counts once by its ID, however many
// connections of it overlap while it reconnects. When an agent moves to
// another replica, the old one's release removes the entry the new one
// shares, until the new one's next Refresh: for that moment (at most a
// sweep, 15 s) the repository may hold one agent more than its cap.
type Quota struct {
	max int
	rdb *redis.Client // nil: this server alone, counted in memory

	mu    sync.Mutex
	local map[slot]int                   // connections here per slot
	mem   map[string]map[string]struct{} // repository -> IDs (memory only)
}

type slot struct{ repo, id string }

// QuotaError refuses an agent whose repository holds its most agents.
type QuotaError struct {
	Repository string
	Max        int
}

func (e *QuotaError) Error() string {
	return fmt.Sprintf("%s already has %d agents connected, this relay's most per repository; end one, or wait", e.Repository, e.Max)
}

// ErrQuotaUnavailable: the Redis that counts did not answer.
var ErrQuotaUnavailable = errors.New("the per-repository count (Redis) is unavailable")

// Quota timing with Redis: an entry lasts quotaTTL unless the replica
// holding it refreshes it (Refresh, at most every quotaTTL/3), so a dead
// replica's agents stop counting by then.
const quotaTTL = 60 * time.Second

// quotaKeyPrefix is followed by the repository: a sorted set of agent
// IDs scored by when each entry ends (unix ms).
const quotaKeyPrefix = "converge:repo:"

var acquireScript = redis.NewScript(`
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[2])
if redis.call('ZSCORE', KEYS[1], ARGV[1]) or redis.call('ZCARD', KEYS[1]) < tonumber(ARGV[4]) then
  redis.call('ZADD', KEYS[1], ARGV[3], ARGV[1])
  redis.call('PEXPIRE', KEYS[1], ARGV[5])
  return 1
end
return 0`)

// NewQuota returns a quota of max agents per repository (max <= 0:
// none, Acquire always succeeds), counted in rdb when it is not nil.
func NewQuota(max int, rdb *redis.Client) *Quota {
	return &Quota{max: max, rdb: rdb, local: map[slot]int{}, mem: map[string]map[string]struct{}{}}
}

// Acquire counts agent id of repo, or returns a *QuotaError when repo
// is full (or ErrQuotaUnavailable). release, called once when the
// agent's connection ends, uncounts it.
func (q *Quota) Acquire(ctx context.Context, repo, id string) (release func(), err error) {
	if q.max <= 0 || repo == "" {
		return func() {}, nil
	}
	s := slot{repo, id}
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.local[s] == 0 {
		if err := q.add(ctx, s); err != nil {
			return nil, err
		}
	}
	q.local[s]++
	var once sync.Once
	return func() { once.Do(func() { q.release(s) }) }, nil
}

// add counts s anew; q.mu held.
func (q *Quota) add(ctx context.Context, s slot) error {
	if q.rdb == nil {
		ids := q.mem[s.repo]
		if len(ids) >= q.max {
			return &QuotaError{Repository: s.repo, Max: q.max}
		}
		if ids == nil {
			ids = map[string]struct{}{}
			q.mem[s.repo] = ids
		}
		ids[s.id] = struct{}{}
		return nil
	}
	ctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	now := time.Now()
	ok, err := acquireScript.Run(ctx, q.rdb, []string{quotaKeyPrefix + s.repo},
		s.id, now.UnixMilli(), now.Add(quotaTTL).UnixMilli(), q.max, quotaTTL.Milliseconds()).Int()
	if err != nil {
		return fmt.Errorf("%w: %w", ErrQuotaUnavailable, err)
	}
	if ok != 1 {
		return &QuotaError{Repository: s.repo, Max: q.max}
	}
	return nil
}

func (q *Quota) release(s slot) {
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.local[s]--; q.local[s] > 0 {
		return
	}
	delete(q.local, s)
	if q.rdb == nil {
		delete(q.mem[s.repo], s.id)
		if len(q.mem[s.repo]) == 0 {
			delete(q.mem, s.repo)
		}
		return
	}
	// Best effort: an entry left behind ends with its TTL.
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	q.rdb.ZRem(ctx, quotaKeyPrefix+s.repo, s.id)
}

// Refresh extends the Redis entries of the agents counted here, and
// counts again any that a Redis that lost its data forgot (even beyond
// the cap: they are connected). Call it well within quotaTTL (the
// server does with its sweep, every 15 s).
func (q *Quota) Refresh(ctx context.Context) error {
	if q.rdb == nil {
		return nil
	}
	q.mu.Lock()
	slots := make([]slot, 0, len(q.local))
	for s := range q.local {
		slots = append(slots, s)
	}
	q.mu.Unlock()
	if len(slots) == 0 {
		return nil
	}
	ctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	until := float64(time.Now().Add(quotaTTL).UnixMilli())
	_, err := q.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
		for _, s := range slots {
			p.ZAdd(ctx, quotaKeyPrefix+s.repo, redis.Z{Score: until, Member: s.id})
			p.PExpire(ctx, quotaKeyPrefix+s.repo, quotaTTL)
		}
		return nil
	})
	return err
}
