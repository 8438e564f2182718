package registry

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"
)

// A Redis that fails over (Sentinel, or a managed Redis behind one name)
// leaves the replicas without a master for a few seconds: from the
// master's death until the Sentinels agree and promote a replica. The
// registry rides that out:
//   - registrations and lookups that fail are retried for RetryWindow,
//     so that an agent or a client arriving then waits instead of being
//     refused (see retry);
//   - lease refreshes are retried every second (the server's refresh
//     loop), within the lease, so that a few seconds without a master
//     cost no lease;
//   - the script is loaded again on the new master when it answers
//     NOSCRIPT (go-redis's Script.Run falls back from EVALSHA to EVAL);
//   - a new master that missed the last writes is Redis that lost data:
//     the next refresh claims the missing entries again.

// RetryWindow bounds how long a registration or a lookup retries a Redis
// that does not answer before it fails with ErrUnavailable: a Sentinel
// failover tuned for it (down-after-milliseconds of a few seconds)
// completes within it; a longer one costs agents a 503, which they
// retry.
const RetryWindow = 10 * time.Second

// Watch counts what a replica's Redis client sees go wrong; its fields
// are read by /metrics. The zero value is ready to use.
type Watch struct {
	Errors    atomic.Uint64 // commands that failed (a missing key is no failure)
	Failovers atomic.Uint64 // master changes seen: a new address dialled
	// OnFailover, when set before Open, is called with the new master's
	// address when the client first connects to it after a change.
	OnFailover func(from, to string)

	mu     sync.Mutex
	master string // the master last dialled
}

// hook returns the go-redis hook that counts failed commands.
func (w *Watch) hook() redis.Hook { return watchHook{w} }

type watchHook struct{ w *Watch }

// DialHook sees which address a new connection reached: the failover
// client dials the master the Sentinels name (its own connections to the
// Sentinels are not hooked), a plain client the address its name
// resolves to (a managed Redis failing over behind one name).
func (h watchHook) DialHook(next redis.DialHook) redis.DialHook {
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		c, err := next(ctx, network, addr)
		if err == nil && c.RemoteAddr() != nil {
			h.w.dialled(c.RemoteAddr().String())
		}
		return c, err
	}
}

func (h watchHook) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		err := next(ctx, cmd)
		h.count(err)
		return err
	}
}

func (h watchHook) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		err := next(ctx, cmds)
		h.count(err)
		return err
	}
}

func (h watchHook) count(err error) {
	if err != nil && !errors.Is(err, redis.Nil) && !isNoScript(err) {
		h.w.Errors.Add(1)
	}
}

// isNoScript: the master does not have the script cached (a new one
// after a failover, or one restarted); Script.Run sends it again.
func isNoScript(err error) bool {
	var re redis.Error
	return errors.As(err, &re) && strings.HasPrefix(re.Error(), "NOSCRIPT ")
}

// dialled records that the client connected to Redis at addr, and
// reports a change of master.
func (w *Watch) dialled(addr string) {
	w.mu.Lock()
	from := w.master
	w.master = addr
	w.mu.Unlock()
	if from == "" || from == addr {
		return
	}
	w.Failovers.Add(1)
	if w.OnFailover != nil {
		w.OnFailover(from, addr)
	}
}

// Master is the address of the master the client last connected to.
func (w *Watch) Master() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.master
}

// ClientLog sends go-redis's own log lines (every failed dial, the
// Sentinels' chatter), which are process-wide, to log at debug level:
// the registry and the server log what matters (a failover, a refresh
// that failed) themselves, once.
func ClientLog(log *slog.Logger) { redis.SetLogger(clientLog{log}) }

type clientLog struct{ log *slog.Logger }

func (l clientLog) Printf(ctx context.Context, format string, v ...any) {
	l.log.DebugContext(ctx, fmt.Sprintf(format, v...))
}

// Sentinel says where the Sentinels are and which master to follow.
type Sentinel struct {
	// Addrs are the Sentinels, HOST:PORT; one that answers is enough.
	Addrs []string
	// Master is the name the Sentinels monitor the master by, or a URL
	// redis://[[USER]:PASSWORD@]NAME[/DB] (rediss:// for TLS, to the
	// master and the Sentinels) when the master needs more.
	Master string
	// Password is the Sentinels' own (requirepass in sentinel.conf);
	// "": none.
	Password string
}

// Name is the master's name, without the password Master may hold.
func (s Sentinel) Name() string {
	if opt, err := s.options(); err == nil {
		return opt.MasterName
	}
	return ""
}

// Validate checks the Sentinel settings before anything dials.
func (s Sentinel) Validate() error {
	if len(s.Addrs) == 0 {
		return errors.New("--redis-master needs --redis-sentinel: the Sentinels' addresses, HOST:PORT[,HOST:PORT…]")
	}
	for _, a := range s.Addrs {
		if host, port, err := net.SplitHostPort(a); err != nil || host == "" || port == "" {
			return fmt.Errorf("--redis-sentinel %q: want HOST:PORT (Sentinel's default port is 26379)", a)
		}
	}
	if s.Master == "" {
		return errors.New("--redis-sentinel needs --redis-master: the name the Sentinels monitor the master by (sentinel monitor NAME …)")
	}
	_, err := s.options()
	return err
}

// options are the failover client's options for s.
func (s Sentinel) options() (*redis.FailoverOptions, error) {
	opt := &redis.FailoverOptions{MasterName: s.Master, SentinelAddrs: s.Addrs, SentinelPassword: s.Password}
	if !strings.Contains(s.Master, "://") {
		return opt, nil
	}
	u, err := url.Parse(s.Master)
	if err != nil || (u.Scheme != "redis" && u.Scheme != "rediss") || u.Hostname() == "" || u.Port() != "" || u.RawQuery != "" {
		return nil, fmt.Errorf("--redis-master %q: want NAME, or redis://[:PASSWORD@]NAME[/DB] (rediss:// for TLS)", s.Master)
	}
	opt.MasterName = u.Hostname()
	opt.Username = u.User.Username()
	opt.Password, _ = u.User.Password()
	if db := strings.Trim(u.Path, "/"); db != "" {
		if opt.DB, err = strconv.Atoi(db); err != nil {
			return nil, fmt.Errorf("--redis-master %q: database %q is no number", s.Master, db)
		}
	}
	if u.Scheme == "rediss" {
		opt.TLSConfig = &tls.Config{MinVersion: tls.VersionTLS12}
	}
	return opt, nil
}

// OpenSentinel connects to the master the Sentinels of s name, following
// it when they fail over, counts into w (if not nil) what goes wrong, and
// checks that the master answers.
func OpenSentinel(ctx context.Context, s Sentinel, w *Watch) (*redis.Client, error) {
	opt, err := s.options()
	if err != nil {
		return nil, err
	}
	opt.Protocol = 2
	opt.DisableIdentity = true
	rdb := redis.NewFailoverClient(opt)
	if w != nil {
		rdb.AddHook(w.hook())
	}
	ctx, cancel := context.WithTimeout(ctx, Timeout)
	defer cancel()
	if err := rdb.Ping(ctx).Err(); err != nil {
		rdb.Close()
		return nil, fmt.Errorf("redis master %q via Sentinels %s does not answer: %w", opt.MasterName, strings.Join(s.Addrs, ","), err)
	}
	return rdb, nil
}

// retry calls f until it succeeds, fails for a reason a retry cannot
// mend, ctx ends, or RetryWindow passes, waiting between tries from
// 100 ms doubling to 1 s; it returns f's last error.
func retry(ctx context.Context, f func() error) error {
	ctx, cancel := context.WithTimeout(ctx, RetryWindow)
	defer cancel()
	wait := 100 * time.Millisecond
	for {
		err := f()
		if err == nil || !transient(err) {
			return err
		}
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return err
		case <-t.C:
		}
		wait = min(2*wait, time.Second)
	}
}

// transient reports whether err is Redis not answering, or a master
// that is not one (yet or any longer): a retry may succeed. An error the
// script or Redis gave for the request itself is not.
func transient(err error) bool {
	if !errors.Is(err, ErrUnavailable) {
		return false
	}
	var re redis.Error
	if !errors.As(err, &re) {
		return true // the network, a timeout, no master known
	}
	return redis.IsReadOnlyError(err) || redis.IsLoadingError(err) || redis.IsMasterDownError(err) ||
		strings.HasPrefix(re.Error(), "TRYAGAIN ")
}
