// Command agent runs in a CI job and serves SSH to users who reach its
// rendezvous ID through a Converge server.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/converge-ci/converge/agent"
	"github.com/converge-ci/converge/agent/ctl"
	"github.com/converge-ci/converge/agent/journal"
	"github.com/converge-ci/converge/agent/lifetime"
	"github.com/converge-ci/converge/internal/cli"
)

func main() {
	// Sessions reach this binary as `converge` (a link in the agent's
	// state folder); `agent ctl ...` is the same.
	if ctl.IsInvokedAs(os.Args[0]) {
		os.Exit(ctl.Main(os.Args[1:], os.Stdout, os.Stderr))
	}
	if len(os.Args) > 1 && os.Args[1] == "ctl" {
		os.Exit(ctl.Main(os.Args[2:], os.Stdout, os.Stderr))
	}
	if len(os.Args) > 1 && os.Args[1] == "journal" {
		journalMain(os.Args[2:])
		return
	}
	if len(os.Args) > 1 && os.Args[1] == "wait" {
		waitMain(os.Args[2:])
		return
	}
	// `agent run` runs the step's command with the job's environment as
	// it was, before what follows rewrites it for the agent.
	stepEnv := os.Environ()
	cmd, o := newCommand()
	keysFromEnv()
	// CONVERGE_OBSERVER_KEYS is the twin of --observer-keys, but a CI
	// secret by that name usually holds the key lines themselves: pass
	// those on as CONVERGE_OBSERVER_KEYS_DATA (which --detach's background
	// agent inherits too).
	if v := os.Getenv("CONVERGE_OBSERVER_KEYS"); holdsKeyLines(v) {
		os.Setenv("CONVERGE_OBSERVER_KEYS_DATA", strings.TrimSpace(os.Getenv("CONVERGE_OBSERVER_KEYS_DATA")+"\n"+v))
		os.Unsetenv("CONVERGE_OBSERVER_KEYS")
	}
	if len(os.Args) > 1 && os.Args[1] == "run" {
		runMain(cmd, o, os.Args[2:], stepEnv)
		return
	}
	if err := cmd.Parse(os.Args[1:]); err != nil {
		if errors.Is(err, cli.ErrExit) {
			return
		}
		os.Exit(2)
	}
	f := cmd.Flags
	switch f.NArg() {
	case 1:
		o.cfg.Server = f.Arg(0)
	case 0:
		cli.Fatal("agent", errors.New("missing server URL, e.g. agent --id myjob wss://converge.example.com; see agent --help"), 2)
	default:
		cli.Fatal("agent", errors.New("too many arguments: give one server URL; see agent --help"), 2)
	}
	// In the background of a job, the job's end bounds the wait for a
	// first login, and a failed job gives users --connect-timeout from its
	// failure, unless --connect-after-failure=false says otherwise.
	if o.detach && !given(f, "connect-after-failure") {
		o.afterFailure = true
	}
	run(o, f.NArg())
}

// given reports whether flag name was set on the command line or through
// its environment twin.
func given(f *flag.FlagSet, name string) bool {
	set := false
	f.Visit(func(fl *flag.Flag) { set = set || fl.Name == name })
	_, env := os.LookupEnv(cli.EnvName(name))
	return set || env
}

// options is the agent's command line: the agent's Config, and what only
// the command uses.
type options struct {
	cfg       agent.Config
	keyFiles  cli.StringList
	keyURLs   cli.StringList
	observers cli.StringList // files and URLs
	logFormat string
	verbose   bool
	stay      bool
	detach    bool
	// afterFailure: --connect-timeout counts from `agent wait --failed`
	afterFailure bool
	noLogin      int // exit status when nobody logged in
}

// newCommand defines the agent command, its help and its flags, which
// fill the returned options.
// agentFooter ends agent --help: exit statuses and examples.
const agentFooter = `Exit status: 0 when the session ended (last logout, expiry, --max-session,
SIGINT/SIGTERM, or unused at "agent wait"); 0 too when nobody logged in
before --connect-timeout, or the status --no-login-status gives (a detached
agent records it in .converge/agent.json); 1 on failure, such as a server
that cannot be reached; 2 on bad usage; 4 when the server's registration
policy refused the agent's token (or it had none): the agent prints the
server's reason and stops at once, without retrying; a network failure
never ends in 4.

Example:
  echo "ssh-ed25519 AAAA... you@laptop" > .authorized_keys
  ./agent --id myjob wss://converge.example.com
Only the person who started the job:
  ./agent --authorized-keys-url https://github.com/$GITHUB_ACTOR.keys wss://converge.example.com
In the background:
  ./agent --detach --id myjob wss://converge.example.com
  make test            # the job's own steps
  ./agent wait         # returns at once unless someone is connected`

func newCommand() (*cli.Command, *options) {
	cmd := cli.New("agent", "agent [flags] ws[s]://host[:port]\n       agent run [flags] ws[s]://host[:port] -- CMD [ARGS...]\n       agent wait [--failed] [--dir DIR]\n       agent journal [--markdown] FILE", `
The Converge agent runs inside a CI job. It connects out to the Converge
server (it never listens on the network), registers a rendezvous ID, and
serves an SSH server - shells, commands, sftp and scp - to users who
connect to that ID.

Users log in with the server's user name and a key from --authorized-keys,
--authorized-keys-data (or CONVERGE_AUTHORIZED_KEYS: key lines, or the path
of a file of them) or --authorized-keys-url;
with none of these, from .authorized_keys in the current directory (re-read
when it changes). When any of them is given, .authorized_keys is read only if
named with --authorized-keys: the directory is usually the checkout, where a
pull request could add a key. A password is accepted only when
CONVERGE_PASSWORD is set. The agent logs each key source it uses at start.

The agent never keeps the job busy by accident: it exits when nobody logs in
before --connect-timeout (status 0, or --no-login-status), when the last user logs out (status 0),
or when users stop typing for --expiry. "touch .hold" in its directory holds
it for another --expiry. With --detach it runs in the background while the
job goes on; "agent wait" at the end of the job waits only if someone is
connected or .hold holds it.

Every login (key fingerprint and comment, or certificate) and session is
logged and kept in journal.jsonl in the agent's state folder (--state-dir);
"agent journal FILE" prints who logged in. The journal is also signed with the host
key (OpenSSH's SSHSIG) into receipt.jsonl and receipt.jsonl.sig in
--record-dir, every minute and at the end; the agent prints the
allowed_signers line to check it with "ssh-keygen -Y verify". With
--record-to, every interactive shell is recorded there too, encrypted with
age to the team's keys before it touches the disk: play one with
  for f in NAME.*.cast.age; do age -d -i ~/.ssh/id_ed25519 "$f"; done | asciinema play -
Inside a session, the command
"converge" talks to the agent: "converge who" lists who is in the job,
"converge --help" what else it does.`)
	cmd.Footer = agentFooter
	// CONVERGE_AUTHORIZED_KEYS is the keys (see keysFromEnv), not the
	// file flag's twin.
	cmd.Env = map[string]string{"authorized-keys": "CONVERGE_AUTHORIZED_KEYS_FILE"}
	o := &options{}
	cfg := &o.cfg
	f := cmd.Flags
	f.StringVar(&cfg.ID, "id", "", "rendezvous `ID` users connect to (letters, digits, . _ -); random when empty")
	f.StringVar(&cfg.Dir, "dir", "", "working directory of sessions, and of .authorized_keys when no other key source is given (default: the current directory)")
	f.Var(&o.keyFiles, "authorized-keys", "authorized_keys `FILE` to read at each login; repeatable; any key source turns off .authorized_keys in --dir unless named here (--authorized-keys .authorized_keys)")
	f.Var(&o.observers, "observer-keys", "`FILE` or https URL (e.g. https://github.com/USER.keys) of keys that may only watch shells, read-only (ssh -t ID attach); repeatable; CONVERGE_OBSERVER_KEYS may hold the key lines themselves")
	f.StringVar(&cfg.ObserverKeys, "observer-keys-data", "", "observer key lines given directly, for CI secrets")
	f.StringVar(&cfg.AuthorizedKeys, "authorized-keys-data", "", "authorized_keys lines given directly, for CI secrets: set them through the environment, usually as CONVERGE_AUTHORIZED_KEYS, which holds the keys as lines or as the path of a file of them (a GitLab variable of type File)")
	f.Var(&o.keyURLs, "authorized-keys-url", "fetch authorized_keys lines from `URL` at start, e.g. https://github.com/USER.keys; https only (plain http only to loopback hosts), no redirect to http; repeatable; a failed fetch stops the agent")
	f.StringVar(&cfg.TrustedUserCAKeys, "trusted-user-ca-keys", "", "`FILE` of SSH certificate authorities' public keys: user certificates they signed for the SSH user name log in (as OpenSSH's TrustedUserCAKeys); re-read at each login")
	f.StringVar(&cfg.StateDir, "state-dir", "", "the agent's private `folder` (journal.jsonl of who logged in, the converge command); default $RUNNER_TEMP/converge-ID, else $XDG_STATE_HOME/converge/ID, else .converge/ID in --dir")
	f.StringVar(&cfg.RecordTo, "record-to", "", "record every interactive shell (asciicast, encrypted with age as it is written) to the keys in `SOURCE`: a file of age recipients (age1...) or SSH public keys (ssh-ed25519, ssh-rsa), an https URL of them (https://github.com/USER.keys), or the lines themselves (CONVERGE_RECORD_TO from a CI secret); off when empty")
	f.StringVar(&cfg.RecordDir, "record-dir", "", "`folder` for the recordings (NAME.NNNN.cast.age) and the signed receipt (receipt.jsonl, receipt.jsonl.sig); default recordings/ in --state-dir")
	f.BoolVar(&cfg.RecordInput, "record-input", false, "record what users type too (default: output and window sizes only, so a password typed at a prompt is not kept)")
	f.BoolVar(&cfg.EncryptReceipt, "encrypt-receipt", false, "encrypt the receipt to the --record-to keys too (receipt.jsonl.age); default plaintext: it holds who and what ran, no typed text")
	f.StringVar(&cfg.HostKeyFile, "host-key", "", "SSH host key `FILE` (OpenSSH private key), or the key's PEM text itself (for CONVERGE_HOST_KEY from a CI secret); a fresh ed25519 key per run when empty")
	f.StringVar(&cfg.Shell, "shell", "", "`PROGRAM` for sessions and commands (default: $SHELL, else bash, else sh; on Windows powershell, or cmd)")
	f.DurationVar(&cfg.Lifetime.ConnectTimeout, "connect-timeout", 10*time.Minute, "exit if nobody logs in within this `duration`, so the job goes on (0: wait forever); see --no-login-status")
	f.IntVar(&o.noLogin, "no-login-status", 0, "exit `status` when nobody logged in before --connect-timeout: 0 lets the job go on; 3, say, lets a script tell it apart")
	f.DurationVar(&cfg.Lifetime.Expiry, "expiry", 30*time.Minute, "end sessions this `duration` after the last input from a user; also what touching .hold adds (0: never)")
	f.DurationVar(&cfg.Lifetime.WarnBefore, "warn-before", 5*time.Minute, "warn in open shells this `duration` before the expiry, at most half of --expiry (0: no warnings)")
	f.DurationVar(&cfg.Lifetime.MaxSession, "max-session", 0, "hard cap on the time from the first login, whatever the input or .hold (0: no cap)")
	f.BoolVar(&o.stay, "stay", false, "keep running after the last user logs out, until the expiry (default: exit with status 0)")
	f.BoolVar(&o.detach, "detach", false, "run in the background once registered, logging to .converge/agent.log; end the job with \"agent wait\" (\"agent wait --failed\" when it failed: --connect-timeout then counts from there)")
	f.BoolVar(&o.afterFailure, "connect-after-failure", false, "count --connect-timeout from \"agent wait --failed\" (the job failed) instead of from the start, for an agent in the background of the job (default false: from the start; with --detach, true unless set)")
	f.DurationVar(&cfg.ResumeWindow, "resume-window", 2*time.Minute, "how long a user's resumable session waits for the user to reconnect after a drop before it is closed")
	f.StringVar(&cfg.AgentToken, "agent-token", "", "shared registration `TOKEN` for a server that asks for one (set it through the environment, from a CI secret)")
	f.StringVar(&cfg.IDToken, "id-token", "", "OIDC identity `TOKEN` from the CI system, minted for the server's URL in https form as audience, for a server that checks them (GitLab: id_tokens: in the job, passed as CONVERGE_ID_TOKEN). On GitHub Actions the agent asks for one itself when the job has permissions: id-token: write")
	f.StringVar(&o.logFormat, "log-format", "text", "log format: text or json")
	f.BoolVar(&o.verbose, "verbose", false, "log debug messages")
	return cmd, o
}

// config completes the agent's Config from o.
func (o *options) config() agent.Config {
	cfg := o.cfg
	cfg.AuthorizedKeysFiles = o.keyFiles
	cfg.AuthorizedKeysURLs = o.keyURLs
	for _, src := range o.observers {
		if strings.HasPrefix(src, "https://") || strings.HasPrefix(src, "http://") {
			cfg.ObserverKeysURLs = append(cfg.ObserverKeysURLs, src)
		} else {
			cfg.ObserverKeysFiles = append(cfg.ObserverKeysFiles, src)
		}
	}
	if strings.HasPrefix(strings.TrimSpace(cfg.HostKeyFile), "-----BEGIN") {
		cfg.HostKeyPEM, cfg.HostKeyFile = []byte(cfg.HostKeyFile), ""
	}
	cfg.Lifetime.ExitOnLastLogout = !o.stay
	cfg.Lifetime.NoLoginStatus = o.noLogin
	cfg.Lifetime.ConnectAfterFailure = o.afterFailure
	cfg.Password = os.Getenv("CONVERGE_PASSWORD")
	log, err := cli.Logger(os.Stderr, o.logFormat, o.verbose)
	if err != nil {
		cli.Fatal("agent", err, 2)
	}
	cfg.Logger = log
	cfg.Version = cli.Version
	return cfg
}

// run completes the Config from o and runs the agent until it ends, or,
// with --detach, starts it again in the background (positional is the
// number of arguments after the flags). On failure it exits with the
// agent's status.
func run(o *options, positional int) {
	cfg := o.config()
	cfg.StateFile = true
	a, err := agent.New(cfg)
	if err != nil {
		cli.Fatal("agent", err, lifetime.ExitUsage)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if o.detach {
		runDetached(ctx, positional, cfg.Dir, o.afterFailure)
		return
	}
	if err := a.Run(ctx); err != nil {
		stop()
		cli.Fatal("agent", err, cfg.Lifetime.ExitStatus(err))
	}
}

// runDetached starts this command again without --detach, in the
// background, and returns once it has registered.
func runDetached(ctx context.Context, positional int, dir string, afterFailure bool) {
	exe, err := os.Executable()
	if err != nil {
		cli.Fatal("agent", fmt.Errorf("find this program to run it in the background: %w", err), lifetime.ExitFailed)
	}
	// The same command line, with --detach=false before the positional
	// arguments (and before a "--" that ends the flags).
	args := os.Args[1:]
	cut := len(args) - positional
	if cut > 0 && args[cut-1] == "--" {
		cut--
	}
	child := append(append(append([]string{}, args[:cut]...), "--detach=false", fmt.Sprintf("--connect-after-failure=%t", afterFailure)), args[cut:]...)
	if dir == "" {
		dir = "."
	}
	if dir, err = filepath.Abs(dir); err != nil {
		cli.Fatal("agent", err, lifetime.ExitFailed)
	}
	if err := lifetime.Detach(ctx, exe, child, dir, os.Stdout); err != nil {
		code := lifetime.ExitFailed
		var ee *exec.ExitError
		if errors.As(err, &ee) && ee.ExitCode() > 0 {
			code = ee.ExitCode()
		}
		cli.Fatal("agent", err, code)
	}
}

// waitMain is "agent wait".
func waitMain(args []string) {
	cmd := cli.New("agent wait", "agent wait [--failed] [--dir DIR]", `
Wait for the agent started in DIR with --detach (or with &) to be done.
If nobody is connected and .hold does not hold it, the agent ends at once
and wait returns; otherwise wait returns when the last user logs out or the
session expires. Run it as the last step of the job; when the job failed,
run "agent wait --failed": a detached agent nobody has used yet then waits
its --connect-timeout for someone to log in and look.`)
	cmd.Footer = `Exit status: 0 when the agent ended by its lifetime (nobody logging in
included), 1 when there is no agent state in DIR or the agent failed.`
	var dir string
	var failed bool
	cmd.Flags.StringVar(&dir, "dir", "", "the agent's directory, as given to the agent (default: the current directory)")
	cmd.Flags.BoolVar(&failed, "failed", false, "the job failed: if nobody has logged in yet, wait for a first login for the agent's --connect-timeout from now (default false: end an unused agent at once)")
	if err := cmd.Parse(args); err != nil {
		if errors.Is(err, cli.ErrExit) {
			return
		}
		os.Exit(lifetime.ExitUsage)
	}
	if cmd.Flags.NArg() > 0 {
		cli.Fatal("agent wait", errors.New("unexpected arguments; see agent wait --help"), lifetime.ExitUsage)
	}
	if dir == "" {
		dir = "."
	}
	dir, err := filepath.Abs(dir)
	if err != nil {
		cli.Fatal("agent wait", err, lifetime.ExitFailed)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := lifetime.Wait(ctx, dir, failed, os.Stdout); err != nil {
		stop()
		cli.Fatal("agent wait", err, lifetime.ExitFailed)
	}
}

// keysFromEnv reads CONVERGE_AUTHORIZED_KEYS, the CI secret, which has one
// meaning: the keys that may log in, as authorized_keys lines, or as the
// path of a file holding them (a GitLab CI/CD variable of type File puts
// the value in a file and the path in the variable). It passes them on
// as the twins of --authorized-keys-data and --authorized-keys
// (CONVERGE_AUTHORIZED_KEYS_DATA, CONVERGE_AUTHORIZED_KEYS_FILE), which
// --detach's background agent inherits too.
func keysFromEnv() {
	v, ok := os.LookupEnv("CONVERGE_AUTHORIZED_KEYS")
	if !ok {
		return
	}
	os.Unsetenv("CONVERGE_AUTHORIZED_KEYS")
	name, v := "CONVERGE_AUTHORIZED_KEYS_DATA", strings.TrimSpace(v)
	sep := "\n"
	if !holdsKeyLines(v) {
		name, sep = "CONVERGE_AUTHORIZED_KEYS_FILE", ","
	}
	if v == "" {
		return
	}
	if old := os.Getenv(name); old != "" {
		v = old + sep + v
	}
	os.Setenv(name, v)
}

// journalMain is "agent journal": who logged in, from a journal file,
// for a CI job's summary or log.
func journalMain(args []string) {
	cmd := cli.New("agent journal", "agent journal [--markdown] FILE", `
Print who logged in to an agent, from its journal (journal.jsonl in its
state folder, see --state-dir): each login's key fingerprint and comment
(or certificate), the way in, when and for how long. It checks the
journal's hash chain and says where it breaks.`)
	var md bool
	cmd.Flags.BoolVar(&md, "markdown", false, "print a Markdown table, for a job summary")
	if err := cmd.Parse(args); err != nil {
		if errors.Is(err, cli.ErrExit) {
			return
		}
		os.Exit(lifetime.ExitUsage)
	}
	if cmd.Flags.NArg() != 1 {
		cli.Fatal("agent journal", errors.New("give one journal file; see agent journal --help"), lifetime.ExitUsage)
	}
	f, err := os.Open(cmd.Flags.Arg(0))
	if err != nil {
		cli.Fatal("agent journal", err, lifetime.ExitFailed)
	}
	defer f.Close()
	entries, err := journal.Read(f)
	journal.WriteSummary(os.Stdout, entries, md)
	if err != nil {
		cli.Fatal("agent journal", fmt.Errorf("%w: the lines from there on are not shown", err), lifetime.ExitFailed)
	}
}

// holdsKeyLines reports whether v looks like authorized_keys lines
// ("ssh-ed25519 AAAA... comment", with options first perhaps, as
// cert-authority lines have) rather than file names.
func holdsKeyLines(v string) bool {
	for _, line := range strings.Split(v, "\n") {
		f := strings.Fields(line)
		for i := 0; i+1 < len(f); i++ {
			if strings.HasPrefix(f[i], "ssh-") || strings.HasPrefix(f[i], "ecdsa-") || strings.HasPrefix(f[i], "sk-") {
				return true
			}
		}
	}
	return false
}
