#!/usr/bin/env bash
# converge.sh is the GitHub Action of action.yml, one step at a time:
#
#   converge.sh main   download the agent from the Converge server, check
#                      its SHA-256 against agent.sha256 here, start
#                      it, print how to connect and write it to the job
#                      summary; then, unless detached, wait until it ends
#   converge.sh post   with detached: true, `agent wait`: end the agent at
#                      once if nobody is connected, else wait for them
#                      (and end an agent main left behind when it failed)
#
# action/run.js runs it with the inputs as INPUT_SERVER, INPUT_ID,
# INPUT_LIMIT_ACCESS_TO_ACTOR, INPUT_LIMIT_ACCESS_TO_USERS, INPUT_OBSERVERS, INPUT_AUTHORIZED_KEYS, INPUT_DETACHED,
# INPUT_CONNECT_TIMEOUT, INPUT_EXPIRY, INPUT_RECORD_TO, INPUT_RECORD_INPUT,
# INPUT_RUN, INPUT_WHEN and
# INPUT_AGENT_SHA256, INPUT_JOB_STATUS (job.status, evaluated when the
# post step runs), and what GitHub sets (GITHUB_RUN_ATTEMPT and
# RUNNER_DEBUG decide when: rerun and debug):
# GITHUB_SERVER_URL, GITHUB_TRIGGERING_ACTOR (or GITHUB_ACTOR) and
# GITHUB_EVENT_NAME (the actor's keys are at $GITHUB_SERVER_URL/ACTOR.keys, on github.com and on GitHub
# Enterprise Server alike; tests point GITHUB_SERVER_URL at a loopback
# server), GITHUB_RUN_ID and GITHUB_RUN_ATTEMPT (the default ID),
# GITHUB_WORKSPACE, RUNNER_TEMP, RUNNER_OS, RUNNER_ARCH, and the files
# GITHUB_STEP_SUMMARY, GITHUB_OUTPUT and GITHUB_STATE. The post step gets
# what main saved as STATE_agent, STATE_dir, STATE_detached and STATE_state
# (the agent's state folder, whose journal says who logged in).
#
# Bash 3.2 (macOS) and Git Bash (Windows) run it too: no ${x,,}, no
# associative arrays, no mapfile.
set -euo pipefail

# give_up ends the step, which succeeds all the same: a debugging aid
# must never fail the job, so it warns and the job goes on without it.
# In the main step with a run input, the step is that command: it runs
# as a plain step, and its status is the step's.
give_up() {
	echo "::warning title=Converge::$*; the job goes on without a shell into it"
	if [ "${step:-}" = main ] && [ -n "${INPUT_RUN:-}" ]; then
		step_shell
		local status=0
		"${shell[@]}" "$INPUT_RUN" || status=$?
		exit "$status"
	fi
	exit 0
}

# refuse is give_up for what must not run (an agent whose sum is not the
# pinned one, a server reached in plain text): an error annotation, then
# the job goes on without the agent.
refuse() {
	echo "::error title=Converge::$*"
	give_up "the agent was not started"
}

# die fails the step: for inputs that say nothing a run could mean.
die() {
	echo "::error title=Converge::$*"
	exit 1
}

is_true() {
	case $1 in true | True | TRUE | yes | 1) return 0 ;; esac
	return 1
}

# dist_name prints the agent's file name under the server's /static/dist/
# for a runner's RUNNER_OS and RUNNER_ARCH.
dist_name() {
	local os arch ext=
	case $1 in
	Linux) os=linux ;;
	macOS) os=darwin ;;
	Windows) os=windows ext=.exe ;;
	*) return 1 ;;
	esac
	case $2 in
	X64) arch=amd64 ;;
	ARM64) arch=arm64 ;;
	*) return 1 ;;
	esac
	# The server has no Windows arm64 agent; Windows on Arm runs amd64 programs.
	if [ "$os" = windows ]; then arch=amd64; fi
	echo "agent-$os-$arch$ext"
}

# server_urls sets http_base (pages and downloads) and ws_base (what the
# agent dials) from the server input, given as https://, wss://, http://,
# ws:// or a bare host (https). Plain http:// and ws:// only to this
# machine: anyone on the path could change the agent or read the session.
server_urls() {
	local s=${1%/}
	case $s in
	https://*) http_base=$s ws_base=wss://${s#https://} ;;
	http://*) http_base=$s ws_base=ws://${s#http://} ;;
	wss://*) ws_base=$s http_base=https://${s#wss://} ;;
	ws://*) ws_base=$s http_base=http://${s#ws://} ;;
	*://*) return 1 ;;
	*) http_base=https://$s ws_base=wss://$s ;;
	esac
	case $http_base in
	http://*) is_loopback "$http_base" || return 1 ;;
	esac
}

# is_loopback reports whether the host of URL $1 is this machine:
# localhost, 127.x.x.x or [::1].
is_loopback() {
	local h=${1#*://}
	h=${h%%/*}
	case $h in
	*@*) return 1 ;;
	'[::1]' | '[::1]:'*) return 0 ;;
	esac
	h=${h%:*[0-9]}
	case $h in
	localhost) return 0 ;;
	127.*) case $h in *[!0-9.]*) return 1 ;; esac ;;
	*) return 1 ;;
	esac
}

# sha256_of prints the SHA-256 of file $1 in hex.
sha256_of() {
	if command -v sha256sum >/dev/null; then
		sha256sum "$1" | awk '{ print $1 }'
	else
		shasum -a 256 "$1" | awk '{ print $1 }'
	fi
}

# verify_agent checks the agent downloaded to $1, named $2 on the server,
# before it is made executable: its SHA-256 must be one the agent-sha256
# input gives, else the one action/agent.sha256 pins for $2 (written by
# `make action-sums` at the release, so the Action's own tag, not the
# server, says which code runs). A mismatch removes the file.
verify_agent() {
	local sums got pinned=$(dirname "$0")/agent.sha256 from
	if [ -n "$(trim "${INPUT_AGENT_SHA256:-}")" ]; then
		sums=$(printf '%s\n' "$INPUT_AGENT_SHA256" | grep -oE '[0-9A-Fa-f]{64}' | tr 'A-F' 'a-f' || true)
		from="the agent-sha256 input"
		[ -n "$sums" ] || die "agent-sha256: give the SHA-256 (64 hex digits) of the server's agents, e.g. from sha256sum"
	else
		sums=$(awk -v n="$2" '$1 !~ /^#/ && ($2 == n || $2 == "*" n) { print tolower($1) }' "$pinned" 2>/dev/null || true)
		from="$pinned ($(sed -n 's/^# version: //p' "$pinned" 2>/dev/null))"
		[ -n "$sums" ] || refuse "$pinned pins no sum for $2: give agent-sha256"
	fi
	got=$(sha256_of "$1")
	if ! printf '%s\n' "$sums" | grep -qx "$got"; then
		rm -f "$1"
		refuse "the agent from $http_base has SHA-256 $got, not the one in $from: not running it. The server runs another release, or someone changed the agent on the way. Use a server built from the Action's release (make dist), or give its agents' sums in agent-sha256 if you trust it"
	fi
	echo "The agent's SHA-256 $got matches $from."
}

# trim prints $1 without leading and trailing white space.
trim() {
	local s=$1
	s=${s#"${s%%[![:space:]]*}"}
	s=${s%"${s##*[![:space:]]}"}
	printf '%s' "$s"
}

random_hex() {
	od -An -tx1 -N12 /dev/urandom | tr -d ' \n'
}

# prepare_dir makes the agent's state directory, .converge in the
# workspace, invisible to git, so that a job that checks for a clean
# checkout is not upset by it.
prepare_dir() {
	# A symlink committed in its place would point these writes elsewhere.
	[ ! -L "$1/.converge" ] || refuse "$1/.converge is a symlink: remove it from the repository"
	mkdir -p "$1/.converge"
	rm -f "$1/.converge/.gitignore"
	echo '*' >"$1/.converge/.gitignore"
}

main() {
	local server id name tmp agent dir out
	server=$(trim "${INPUT_SERVER:-}")
	id=$(trim "${INPUT_ID:-}")
	: "${GITHUB_STEP_SUMMARY:=/dev/null}" "${GITHUB_OUTPUT:=/dev/null}" "${GITHUB_STATE:=/dev/null}"
	[ -n "$server" ] || give_up "the server input is required, e.g. with: server: https://converge.example.com"
	server_urls "$server" || refuse "server: $server is not an https:// (or wss://) URL; plain http:// and ws:// only to localhost"
	if ! when_wanted; then
		not_wanted
		return
	fi
	name=$(dist_name "${RUNNER_OS:-}" "${RUNNER_ARCH:-}") ||
		give_up "there is no Converge agent for a ${RUNNER_OS:-?} ${RUNNER_ARCH:-?} runner (there are for Linux and macOS on X64 and ARM64, and Windows)"
	tmp=${RUNNER_TEMP:-${TMPDIR:-/tmp}}/converge
	mkdir -p "$tmp"
	agent=$tmp/$name
	echo "Downloading the agent from $http_base/static/dist/$name"
	curl -fsSL --retry 3 --connect-timeout 30 -o "$agent.part" "$http_base/static/dist/$name" ||
		give_up "could not download the agent from $http_base/static/dist/$name: is the server input right, and was the server built with make dist?"
	verify_agent "$agent.part" "$name"
	mv -f "$agent.part" "$agent"
	chmod 755 "$agent"

	id=${id:-gh-${GITHUB_RUN_ID:-0}-${GITHUB_RUN_ATTEMPT:-1}-$(random_hex)}
	dir=${GITHUB_WORKSPACE:-$PWD}
	# The agent's private folder, outside the checkout: its journal of
	# who logged in, which the summary lists at the end.
	state=$tmp/state-$id
	agent_args "$id" "$dir"
	args+=(--state-dir "$state")
	if [ -n "${INPUT_RUN:-}" ]; then
		run_step "$id"
		return
	fi
	prepare_dir "$dir"
	out=$tmp/agent-start.txt
	# The agent registers, prints how to connect, and goes on in the
	# background; main then either returns or follows it.
	"$agent" "${args[@]}" "$ws_base" | tee "$out" || give_up "the agent did not start; its output is above"
	{
		echo "agent=$agent"
		echo "dir=$dir"
		echo "detached=$detached"
		echo "state=$state"
	} >>"$GITHUB_STATE"
	report "$id" "$out"
	if [ "$detached" = true ]; then
		echo "The job goes on; at its end the post step waits while someone is connected."
		return 0
	fi
	follow "$dir"
	who_summary "$agent" "$state"
}

# who_summary writes who logged in, from the journal of the agent with
# state folder $2, to the job summary and the log.
who_summary() {
	[ -f "$2/journal.jsonl" ] || return 0
	"$1" journal --markdown "$2/journal.jsonl" >>"$GITHUB_STEP_SUMMARY" || echo "::warning title=Converge::the journal of who logged in is damaged; see above"
	"$1" journal "$2/journal.jsonl" || true
}

# agent_args sets args (the agent's flags) and detached from the inputs.
agent_args() {
	detached=false
	if is_true "${INPUT_DETACHED:-false}"; then detached=true; fi
	args=(--detach --id "$1" --dir "$2")
	# Detached, the connect timeout counts from the job's failure (the post
	# step's agent wait --failed); in the foreground, from now.
	if [ "$detached" = false ]; then args+=(--connect-after-failure=false); fi
	local keys=
	if is_true "${INPUT_LIMIT_ACCESS_TO_ACTOR:-true}"; then
		trusted_actor
		args+=(--authorized-keys-url "${GITHUB_SERVER_URL:-https://github.com}/$actor.keys")
		keys=yes
	fi
	local u
	for u in $(printf '%s' "${INPUT_LIMIT_ACCESS_TO_USERS:-}" | tr ',' ' '); do
		case $u in
		*[!A-Za-z0-9-]* | -*) give_up "limit-access-to-users: $u is not a GitHub user name" ;;
		esac
		args+=(--authorized-keys-url "${GITHUB_SERVER_URL:-https://github.com}/$u.keys")
		keys=yes
	done
	for u in $(printf '%s' "${INPUT_OBSERVERS:-}" | tr ',' ' '); do
		case $u in
		*[!A-Za-z0-9-]* | -*) die "observers: $u is not a GitHub user name" ;;
		esac
		args+=(--observer-keys "${GITHUB_SERVER_URL:-https://github.com}/$u.keys")
	done
	if [ -n "${INPUT_AUTHORIZED_KEYS:-}" ]; then
		# Through the environment, as a CI secret should, not on the command line.
		CONVERGE_AUTHORIZED_KEYS_DATA=$(printf '%s\n%s' "${CONVERGE_AUTHORIZED_KEYS_DATA:-}" "$INPUT_AUTHORIZED_KEYS")
		export CONVERGE_AUTHORIZED_KEYS_DATA
		keys=yes
	fi
	if [ -z "$keys" ] && [ -z "${CONVERGE_AUTHORIZED_KEYS:-}${CONVERGE_AUTHORIZED_KEYS_DATA:-}${CONVERGE_AUTHORIZED_KEYS_URL:-}${CONVERGE_PASSWORD:-}" ]; then
		# Else the agent would read .authorized_keys in the checkout, where a pull request could add a key.
		give_up "nobody could log in: keep limit-access-to-actor: true, or give authorized-keys"
	fi
	# The receipt, and recordings with record-to, go where the step's
	# records output says, outside the checkout.
	records=${RUNNER_TEMP:-${TMPDIR:-/tmp}}/converge/records-$1
	args+=(--record-dir "$records")
	echo "records=$records" >>"${GITHUB_OUTPUT:-/dev/null}"
	if [ -n "$(trim "${INPUT_RECORD_TO:-}")" ]; then
		# Through the environment: key lines may come from a secret.
		CONVERGE_RECORD_TO=$(trim "$INPUT_RECORD_TO")
		export CONVERGE_RECORD_TO
	fi
	if is_true "${INPUT_RECORD_INPUT:-false}"; then args+=(--record-input); fi
	local v
	v=$(trim "${INPUT_CONNECT_TIMEOUT:-}")
	if [ -n "$v" ]; then args+=(--connect-timeout "$v"); fi
	v=$(trim "${INPUT_EXPIRY:-}")
	if [ -n "$v" ]; then args+=(--expiry "$v"); fi
}

# report picks the commands out of what the agent printed (file $2) and
# writes them to the job summary and the step's outputs.
report() {
	local id=$1 ssh known fp browser
	ssh=$(awk '/^ *ssh +-oProxyCommand=/ { sub(/^ *ssh +/, "ssh "); print; exit }' "$2")
	known=$(awk -v id="$id" '$1 == id && $2 ~ /^(ssh-|ecdsa-)/ { print $1 " " $2 " " $3; exit }' "$2")
	fp=$(awk '$1 == "Host" && $2 == "key:" { print $3; exit }' "$2")
	# A browser link, once the agent prints one: an http(s) URL outside log lines.
	browser=$(awk '!/^time=/ && !/^[{]/ && match($0, /https?:[/][/][^ "<>]+/) { print substr($0, RSTART, RLENGTH); exit }' "$2")
	if [ -z "$ssh" ] || [ -z "$known" ]; then
		give_up "the agent's output above lacks the ssh command or the known_hosts line"
	fi
	echo "id=$id" >>"$GITHUB_OUTPUT"
	echo "ssh-command=$ssh" >>"$GITHUB_OUTPUT"
	summary "$id" "$ssh" "$known" "$fp" "$browser" >>"$GITHUB_STEP_SUMMARY"
}

summary() {
	local fence='```'
	echo "### Converge: a shell into this job"
	echo
	echo "Trust this job's host key (${4:-see the log}) once, so ssh can check it is this job you reach:"
	echo
	echo "${fence}sh"
	echo "echo '$3' >> ~/.ssh/known_hosts"
	echo "$fence"
	echo
	echo "Then connect; \`wsproxy\` is on the server's [downloads page]($http_base/downloads):"
	echo
	echo "${fence}sh"
	echo "$2"
	echo "$fence"
	echo
	if [ -n "$5" ]; then
		echo "Or in a browser: <$5>"
		echo
	fi
	echo "sftp and scp take the same options. ID \`$1\`; who may log in: $(who_may)."
	if [ "$detached" = true ]; then
		echo "The job went on: at its end it waits while someone is connected."
	else
		echo "The step waited until the session ended."
	fi
	echo
}

# trusted_actor sets actor to the user whose keys limit-access-to-actor lets in:
# who triggered this run (on a re-run, who re-ran it, not the original
# actor). On events an outsider can trigger against the base repository's
# workflow (a pull request from a fork, a comment, a workflow_run after
# one), that user may be anyone, so those events are refused unless
# allow-untrusted-events opts in.
trusted_actor() {
	actor=${GITHUB_TRIGGERING_ACTOR:-${GITHUB_ACTOR:-}}
	[ -n "$actor" ] || give_up "limit-access-to-actor needs GITHUB_TRIGGERING_ACTOR or GITHUB_ACTOR, which GitHub sets"
	case "${GITHUB_EVENT_NAME:-}" in
	pull_request_target | issue_comment | workflow_run | pull_request_review_comment | discussion_comment)
		is_true "${INPUT_ALLOW_UNTRUSTED_EVENTS:-false}" ||
			give_up "limit-access-to-actor refuses the $GITHUB_EVENT_NAME event: its actor (@$actor) may be someone outside the repository. Give authorized-keys instead, or set allow-untrusted-events: true if you accept that"
		;;
	esac
}

who_may() {
	local w=
	if is_true "${INPUT_LIMIT_ACCESS_TO_ACTOR:-true}"; then w="the keys of @${GITHUB_TRIGGERING_ACTOR:-${GITHUB_ACTOR:-}}"; fi
	local users
	users=$(printf '%s' "${INPUT_LIMIT_ACCESS_TO_USERS:-}" | tr ',' ' ' | xargs)
	if [ -n "$users" ]; then w="${w:+$w and }the keys of $(printf '@%s ' $users | sed 's/ $//')"; fi
	if [ -n "${INPUT_AUTHORIZED_KEYS:-}" ]; then w="${w:+$w and }the authorized-keys input"; fi
	echo "${w:-the keys given through CONVERGE_* variables}"
}

# follow shows the log of the agent running in $1 until it ends, and
# returns its exit status.
follow() {
	local state=$1/.converge/agent.json log=$1/.converge/agent.log chunk pid status reason seen
	chunk=$(dirname "$log")/follow.txt
	seen=$(($(wc -c <"$log")))
	echo "This step waits until the session ends (detached: true lets the job go on)."
	while ! grep -q '"exited": true' "$state"; do
		pid=$(sed -n 's/^ *"pid": \([0-9]*\).*/\1/p' "$state")
		if ! alive "$pid" && ! grep -q '"exited": true' "$state"; then
			give_up "the agent (pid $pid) ended without saying why; see its log above"
		fi
		tail -c "+$((seen + 1))" "$log" >"$chunk"
		cat "$chunk"
		seen=$((seen + $(wc -c <"$chunk")))
		sleep 1
	done
	tail -c "+$((seen + 1))" "$log"
	status=$(sed -n 's/^ *"exit_status": \([0-9]*\).*/\1/p' "$state")
	reason=$(sed -n 's/^ *"reason": "\(.*\)",*$/\1/p' "$state")
	echo "The agent ended: $reason (exit status $status)."
	# Nobody logging in is no failure, whatever status --no-login-status chose.
	if grep -q '"no_login": true' "$state"; then return 0; fi
	[ "$status" = 0 ] || give_up "the agent failed: see its log above"
}

alive() {
	if [ "${RUNNER_OS:-}" = Windows ]; then
		# Git Bash's kill knows only its own processes; ask Windows.
		MSYS_NO_PATHCONV=1 MSYS2_ARG_CONV_EXCL='*' tasklist.exe /FI "PID eq $1" /NH 2>/dev/null | grep -qw "$1"
		return
	fi
	kill -0 "$1" 2>/dev/null
}

# post waits for a detached agent; it also ends an agent that main left
# running when it failed or was cancelled while following it.
post() {
	if [ -z "${STATE_agent:-}" ]; then
		return 0
	fi
	if [ "${STATE_detached:-}" != true ] && grep -q '"exited": true' "${STATE_dir:-.}/.converge/agent.json" 2>/dev/null; then
		return 0
	fi
	# When the job failed, a detached agent nobody has used yet waits its
	# connect-timeout for someone to log in and look.
	local failed=
	if [ "${INPUT_JOB_STATUS:-}" = failure ] && [ "${STATE_detached:-}" = true ]; then failed=--failed; fi
	# A helper for debugging must not fail the job: say so, and go on.
	"$STATE_agent" wait $failed --dir "${STATE_dir:-.}" || echo "::warning title=Converge::agent wait failed; see above"
	if [ -n "${STATE_state:-}" ]; then who_summary "$STATE_agent" "$STATE_state"; fi
}

# when_wanted says whether the when input lets Converge in on this run:
# always and failure (the default) do; rerun only on a re-run
# (GITHUB_RUN_ATTEMPT > 1); debug only on a re-run with debug logging
# (RUNNER_DEBUG=1).
when_wanted() {
	local when
	when=$(trim "${INPUT_WHEN:-}")
	case $when in
	"" | failure | always) return 0 ;;
	rerun) [ "${GITHUB_RUN_ATTEMPT:-1}" -gt 1 ] 2>/dev/null ;;
	debug) [ "${RUNNER_DEBUG:-}" = 1 ] ;;
	*) die "when: $when is not one of failure, always, rerun, debug" ;;
	esac
}

# not_wanted is main when the when input keeps Converge out: the run
# input runs as a plain step, with no agent; without one, nothing runs.
not_wanted() {
	if [ -z "${INPUT_RUN:-}" ]; then
		echo "Converge: not started on this run (when: ${INPUT_WHEN:-})."
		return 0
	fi
	step_shell
	local status=0
	"${shell[@]}" "$INPUT_RUN" || status=$?
	exit "$status"
}

# step_shell sets shell to what runs the run input, as GitHub runs a run:
# step by default: bash with -e and pipefail; PowerShell on Windows.
step_shell() {
	if [ "${RUNNER_OS:-}" != Windows ]; then
		shell=(bash --noprofile --norc -eo pipefail -c)
	elif command -v pwsh >/dev/null 2>&1; then
		shell=(pwsh -NoProfile -NonInteractive -Command)
	else
		shell=(powershell -NoProfile -NonInteractive -Command)
	fi
}

# run_step is main with the run input: the step runs the command through
# `agent run`, which opens a shell into the step only if it fails (with
# when: always, also before it runs: --break-before), and the step ends
# with the status it decides.
run_step() {
	local a rest=() status=0
	for a in "${args[@]}"; do
		if [ "$a" != --detach ]; then rest+=("$a"); fi
	done
	if [ "$(trim "${INPUT_WHEN:-}")" = always ]; then rest+=(--break-before); fi
	step_shell
	echo "id=$1" >>"$GITHUB_OUTPUT"
	echo "Running the step through the Converge agent: if it fails, it waits here for you to connect."
	# Git Bash would rewrite arguments that look like paths for Windows programs.
	MSYS_NO_PATHCONV=1 MSYS2_ARG_CONV_EXCL='*' "$agent" run "${rest[@]}" "$ws_base" -- "${shell[@]}" "$INPUT_RUN" || status=$?
	# Only a failed step started the agent: then who came and what they decided.
	who_summary "$agent" "$state"
	exit "$status"
}

step=${1:-}
case $step in
main) main ;;
post) post ;;
*)
	echo "usage: $0 main|post" >&2
	exit 2
	;;
esac
