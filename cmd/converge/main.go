// Command converge is the Converge rendezvous server.
package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"
	"unicode"

	"github.com/converge-ci/converge/internal/cli"
	"github.com/converge-ci/converge/server"
)

func main() {
	if len(os.Args) > 1 && os.Args[1] == "healthcheck" {
		healthcheckMain(os.Args[2:])
		return
	}
	cmd := newCommand()
	o := defineFlags(cmd)
	if err := cmd.Parse(os.Args[1:]); err != nil {
		if errors.Is(err, cli.ErrExit) {
			return
		}
		os.Exit(2)
	}
	if cmd.Flags.NArg() > 0 {
		cli.Fatal("converge", errors.New("unexpected arguments; see converge --help"), 2)
	}
	cfg, err := o.config()
	if err != nil {
		cli.Fatal("converge", err, 2)
	}
	srv, err := server.New(cfg)
	if err != nil {
		cli.Fatal("converge", err, 2)
	}
	// One descriptor per agent and per idle pooled stream, up to six per
	// client stream: see the README's Server operations for what to set.
	cli.CheckFileLimit(cfg.Logger, srv.MaxFiles())
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := srv.Run(ctx); err != nil {
		cli.Fatal("converge", err, 1)
	}
}

// newCommand is the converge command with its help, before its flags.
func newCommand() *cli.Command {
	cmd := cli.New("converge", "converge [flags]\n       converge healthcheck [--url URL]", `
Converge is the rendezvous server: agents in CI jobs connect to it, users
reach an agent through it by its ID, and it pipes the encrypted SSH bytes
between them without being able to read them. It also serves the usage
page with copy-paste commands and the downloads.`)
	cmd.Footer = `Examples:
  converge --addr :8000 --ssh-user converge
  converge --addr :443 --tls-cert fullchain.pem --tls-key key.pem
  CONVERGE_SESSIONS_PASSWORD=... converge --trusted-proxy 10.0.0.0/8
  converge --base-path /converge     # at https://example.com/converge/
Then open http://localhost:8000 for the recipes. /metrics serves
Prometheus metrics, /healthz answers ok while the server runs;
"converge healthcheck" asks it (for container health checks).

Agents' secrets are signed with a key, so that a restarted server, or any
replica sharing the key, checks an agent's claim to its ID. A single server
makes its key once and keeps it in --state-dir. Replicas share one:
CONVERGE_CLUSTER_KEY, at least 32 bytes as hex or base64 (make one with
openssl rand -hex 32), set in the environment only; it overrides
--state-dir.

Several replicas behind a load balancer share their registry in Redis:
  CONVERGE_CLUSTER_KEY=... converge --addr :8001 --redis redis://127.0.0.1:6379/0 \
    --advertise http://10.0.0.5:8001
With Redis Sentinel, name the Sentinels and the master instead:
  converge ... --redis-sentinel 10.0.0.7:26379,10.0.0.8:26379,10.0.0.9:26379 \
    --redis-master converge
A replica forwards clients of agents another holds to it; see
docs/several-servers.md.

Who may register: anyone by default. With --agent-token-file (or
CONVERGE_AGENT_TOKENS) agents must present a shared token; with
--oidc-issuer, an identity token from their CI system that one of the
issuer's --oidc-allow rules admits:
  converge --oidc-issuer https://token.actions.githubusercontent.com \
    --oidc-allow 'repository=acme/*' --max-agents-per-repo 20
What the relay verifies (repository, workflow, run, actor) is shown on the
sessions page and to the people connecting. See docs/who-may-register.md.`
	cmd.VersionDetail = func() string {
		sums, err := server.TerminalSums()
		if err != nil {
			return "browser terminal: " + err.Error() + "\n"
		}
		return "SHA-256 of the browser terminal's files (what browsers run; compare with a release):\n" + sums
	}
	return cmd
}

// options are the command's flags: the server's Config, and what the
// command makes of the rest.
type options struct {
	cfg         server.Config
	logFormat   string
	verbose     bool
	streamPool  int
	stateDirErr error // why there is no default --state-dir, if there is none
	oidc        *server.OIDCFlags
}

// defineFlags defines cmd's flags, with their defaults, into options.
func defineFlags(cmd *cli.Command) *options {
	o := &options{}
	cfg := &o.cfg
	var stateDir string
	stateDir, o.stateDirErr = server.DefaultStateDir()
	f := cmd.Flags
	f.StringVar(&cfg.Addr, "addr", server.DefaultAddr, "address to listen on, HOST:PORT")
	f.StringVar(&cfg.SSHUser, "ssh-user", "converge", "the user name clients log in to agents with; agents learn it when they register")
	f.DurationVar(&cfg.Grace, "grace", server.DefaultGrace, "how long the ID of an agent whose link dropped stays reserved for it (negative: not at all)")
	f.IntVar(&cfg.MaxAgentsPerAddr, "max-agents-per-addr", server.DefaultMaxAgentsPerAddr, "most agents connected at once from one remote address (an IPv6 address counts as its /64), counting IDs reserved for agents that dropped from it; CI runners behind one NAT share an address (negative: unlimited)")
	f.IntVar(&cfg.MaxAgents, "max-agents", server.DefaultMaxAgents, "most agents connected at once in all; beyond it agents are refused with 503 and retry. An agent costs the server about 18 KB of memory and one file descriptor, so the default is about 0.35 GB: refusing beats being killed for memory with every session on board (negative: unlimited)")
	f.IntVar(&cfg.MaxRegistering, "max-registering", server.DefaultMaxRegistering, "most agents registering at once (claiming their ID and being upgraded); more wait their turn, at most 10 s (then 503, and they retry), so that a herd coming back after a restart waits outside the server's run queue (negative: unlimited)")
	f.IntVar(&cfg.MaxStreams, "max-streams", server.DefaultMaxStreams, "most client streams open at once in all; beyond it clients are refused with 503. A stream costs the server about 70 KB of memory, up to 200 KB once busy (two 64 KiB relay buffers), and two file descriptors (six on Linux when both legs are raw streams, spliced in the kernel through two pipes), so the default is 0.7 to 2 GB (negative: unlimited)")
	f.IntVar(&o.streamPool, "stream-pool", server.DefaultStreamPool, fmt.Sprintf("idle streams each agent keeps open for its next clients once one has connected, so that a client is spliced at once instead of waiting for the agent to dial back (a notice, a TCP and TLS handshake and an upgrade on the agent's side of the path). Each costs a file descriptor and about 40 KB while idle; agents older than this server dial back for every client (0: off; at most %d)", server.MaxStreamPool))
	f.IntVar(&cfg.MaxReservations, "max-reservations", server.DefaultMaxReservations, "most IDs kept reserved, in all, for agents whose link dropped (a few hundred bytes each); when full, a new reservation drops the oldest, since an agent comes back within seconds or not at all (negative: unlimited)")
	f.IntVar(&cfg.MaxStreamsPerAddr, "max-streams-per-addr", server.DefaultMaxStreamsPerAddr, "most client streams open at once from one remote address (an IPv6 address counts as its /64) (negative: unlimited)")
	f.StringVar(&cfg.TLSCertFile, "tls-cert", "", "TLS certificate `FILE` (PEM, with chain): serve https and wss directly; needs --tls-key. Without it the server speaks plain HTTP, for use behind a TLS proxy")
	f.StringVar(&cfg.TLSKeyFile, "tls-key", "", "TLS private key `FILE` (PEM) for --tls-cert")
	f.Var((*cli.StringList)(&cfg.TrustedProxies), "trusted-proxy", "`ADDR` or CIDR of a reverse proxy whose X-Forwarded-Proto/Host/For/Prefix headers are believed; repeatable, or comma-separated. Default none: the headers are ignored, since anyone could send them")
	f.StringVar(&cfg.BasePath, "base-path", "", "serve under this `PATH` prefix, e.g. /converge for https://example.com/converge/, behind a proxy that forwards paths unchanged: the server strips it from requests and puts it in every link and recipe. Default none: served at the root. A trusted proxy that strips the prefix itself sends X-Forwarded-Prefix instead (see deploy/nginx-converge.conf)")
	f.StringVar(&cfg.SessionsPassword, "sessions-password", "", "enable the live sessions view at /sessions behind HTTP basic auth with this `PASSWORD` (any user name); off when empty, because it lists the IDs that reach agents. Prefer the environment variable to keep it out of ps")
	f.StringVar(&cfg.StateDir, "state-dir", stateDir, "`DIR` to keep the server's key in (file server.key, made once, mode 0600), so that a restarted server still checks its agents' secrets and gives their IDs back to them; unused when CONVERGE_CLUSTER_KEY is set")
	f.DurationVar(&cfg.DrainTimeout, "drain-timeout", 10*time.Second, "on SIGTERM, how long to wait for relayed connections to end after telling agents and clients to reconnect")
	f.DurationVar(&cfg.DrainDelay, "drain-delay", 0, "on SIGTERM, how long /healthz answers 503 (and new agents are refused) before agents are released and connections closed, so that a load balancer sends them elsewhere first (negative: none)")
	// Its default depends on --redis: say both, as Config.Validate applies them.
	f.Lookup("drain-delay").DefValue = fmt.Sprintf("0s, or %v with --redis", server.DefaultClusterDrainDelay)
	f.StringVar(&cfg.Redis, "redis", "", "`URL` of the Redis (or Valkey) that replicas of one service share their registry in: redis://[:PASSWORD@]HOST:PORT/DB, rediss:// for TLS, unix:///PATH. Needs --advertise and CONVERGE_CLUSTER_KEY. Prefer the environment variable when it holds a password. Default none: a single server")
	f.Var((*cli.StringList)(&cfg.RedisSentinels), "redis-sentinel", "`HOST:PORT` of a Redis Sentinel, repeatable or comma-separated, instead of --redis: replicas then follow the master the Sentinels name (--redis-master) when they fail over. The Sentinels' own password, if any, in CONVERGE_REDIS_SENTINEL_PASSWORD. Default none")
	f.StringVar(&cfg.RedisMaster, "redis-master", "", "with --redis-sentinel: the `NAME` the Sentinels monitor the master by, or redis://[:PASSWORD@]NAME/DB (rediss:// for TLS) when it needs a password, TLS or another database, as --redis would. Prefer the environment variable when it holds a password")
	f.StringVar(&cfg.Advertise, "advertise", "", "`URL` other replicas reach this one by, to forward clients of the agents it holds, as http://HOST:PORT (https when it serves TLS); port 0 means the port it listens on. Required with --redis")
	f.StringVar(&cfg.AgentTokenFile, "agent-token-file", "", "`FILE` of shared registration tokens, one per line (# comments), re-read when it changes: agents must present one (CONVERGE_AGENT_TOKEN). CONVERGE_AGENT_TOKENS (environment only) adds more, separated by commas or spaces. Default none: with no --oidc-issuer either, any agent registers")
	o.oidc = server.NewOIDCFlags(&cfg.OIDCIssuers)
	f.Var(o.oidc.Issuer(), "oidc-issuer", "`URL` of a CI system whose identity tokens admit agents, e.g. https://token.actions.githubusercontent.com or https://gitlab.com; repeatable. Each needs --oidc-allow rules after it: an issuer without rules admits nothing")
	f.Var(o.oidc.Allow(), "oidc-allow", "`CLAIM=GLOB` rule for the --oidc-issuer before it, e.g. repository=acme/* (GitHub), project_path=acme/* (GitLab), repository_owner=acme; several conditions joined by & must all hold; any rule may match; repeatable. The glob's * stops at /")
	f.StringVar(&cfg.OIDCAudience, "oidc-audience", "", "`AUDIENCE` identity tokens must be minted for. Default: this server's URL as agents reach it (https://host[/base-path]), which is what agents ask their CI system for; set it when agents reach the server by several names, or through a proxy that is not a --trusted-proxy")
	f.IntVar(&cfg.MaxAgentsPerRepo, "max-agents-per-repo", 0, "most agents connected at once for one repository, as verified from identity tokens, counted across replicas with --redis; hosted runners share addresses, so the per-address cap is the wrong unit there (0: unlimited)")
	f.StringVar(&o.logFormat, "log-format", "text", "log format: text or json")
	f.BoolVar(&o.verbose, "verbose", false, "log debug messages")
	return o
}

// config is the server's Config from the parsed flags and the
// environment.
func (o *options) config() (server.Config, error) {
	cfg := o.cfg
	log, err := cli.Logger(os.Stderr, o.logFormat, o.verbose)
	if err != nil {
		return cfg, err
	}
	cfg.Logger = log
	cfg.Version = cli.Version
	cfg.StreamPool = o.streamPool
	if o.streamPool <= 0 {
		cfg.StreamPool = -1 // off; the Config's zero means the default
	}
	if err := o.oidc.Err(); err != nil {
		return cfg, err
	}
	cfg.AgentTokens = strings.FieldsFunc(os.Getenv("CONVERGE_AGENT_TOKENS"), func(r rune) bool { return r == ',' || unicode.IsSpace(r) })
	cfg.ClusterKey = os.Getenv("CONVERGE_CLUSTER_KEY")
	cfg.RedisSentinelPassword = os.Getenv("CONVERGE_REDIS_SENTINEL_PASSWORD")
	if cfg.ClusterKey == "" && cfg.StateDir == "" {
		if o.stateDirErr != nil {
			return cfg, o.stateDirErr
		}
		return cfg, errors.New("--state-dir is empty: name a directory to keep the server key in, or set CONVERGE_CLUSTER_KEY")
	}
	return cfg, nil
}
