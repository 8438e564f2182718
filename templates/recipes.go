package templates

import (
	"net/url"
	"strings"

	"github.com/converge-ci/converge/internal/wire"
)

// The recipes of the usage page, as text: templ collapses whitespace in
// markup, so the multi-line commands are built here and shown in <pre>.
// Every value filled in is a URL, host, user name or ID, whose syntax the
// server checks, so the commands stay safe to paste into a shell.

func lines(ls ...string) string { return strings.Join(ls, "\n") }

// clientURL is the WebSocket URL that reaches the agent.
func (d UsageData) clientURL() string { return d.WSBase + wire.ClientPath(d.ID) }

// proxyCommand is the ProxyCommand that reaches the agent.
func (d UsageData) proxyCommand() string { return "wsproxy " + d.clientURL() }

// sshOpts are the options every OpenSSH tool needs to reach the agent.
func (d UsageData) sshOpts() string {
	return `-oProxyCommand="` + d.proxyCommand() + `" -oHostKeyAlias=` + d.ID
}

func (d UsageData) login() string { return d.User + "@localhost" }

func (d UsageData) keysRecipe() string {
	return lines(
		"echo \"ssh-ed25519 AAAA... you@laptop\" >> .authorized_keys   # your key, written by the job, never committed",
		".converge/agent --authorized-keys-url https://github.com/$GITHUB_ACTOR.keys --id "+d.ID+" "+d.WSBase+"   # GitHub Actions: the keys of whoever started the job",
	)
}

// checkSum is the line that checks file against this server's sum of
// the binary name with tool (sha256sum, or shasum -a 256 on macOS), or
// nothing when the server lacks it. Sums are hex, safe in a shell line.
func (d UsageData) checkSum(tool, name, file string) []string {
	sum, ok := d.Sums[name]
	if !ok {
		return nil
	}
	return []string{"echo '" + sum + "  " + file + "' | " + tool + " -c   # this server's sum (see below)"}
}

func (d UsageData) ciLinux() string {
	ls := []string{"curl -fsSL --create-dirs -o .converge/agent " + d.Base + "/static/agent"}
	ls = append(ls, d.checkSum("sha256sum", "agent-linux-amd64", ".converge/agent")...)
	return lines(append(ls, "chmod +x .converge/agent", ".converge/agent --id "+d.ID+" "+d.WSBase)...)
}

func (d UsageData) ciMacOS() string {
	ls := []string{
		`arch=$(uname -m); [ "$arch" = x86_64 ] && arch=amd64`,
		"curl -fsSL --create-dirs -o .converge/agent " + d.Base + "/static/dist/agent-darwin-$arch",
	}
	amd, arm := d.Sums["agent-darwin-amd64"], d.Sums["agent-darwin-arm64"]
	if amd != "" || arm != "" {
		ls = append(ls, `[ "$arch" = amd64 ] && sum=`+amd+` || sum=`+arm,
			`echo "$sum  .converge/agent" | shasum -a 256 -c   # this server's sum (see below)`)
	}
	return lines(append(ls, "chmod +x .converge/agent", ".converge/agent --id "+d.ID+" "+d.WSBase)...)
}

func (d UsageData) ciWindows() string {
	ls := []string{"curl.exe -fsSL --create-dirs -o .converge/agent.exe " + d.Base + "/static/agent.exe"}
	if sum, ok := d.Sums["agent-windows-amd64.exe"]; ok {
		ls = append(ls, `if ((Get-FileHash .converge\agent.exe).Hash -ne "`+sum+`") { throw "agent.exe is not the one this server lists" }`)
	}
	return lines(append(ls, `.converge\agent.exe --id `+d.ID+" "+d.WSBase)...)
}

func (d UsageData) ciDetach() string {
	return lines(
		".converge/agent --detach --id "+d.ID+" "+d.WSBase,
		"make test                 # the job's own steps",
		".converge/agent wait      # at the end of the job; when it failed: wait --failed",
	)
}

func (d UsageData) getWSProxy() string {
	ls := []string{"mkdir -p ~/.local/bin", "curl -fsSLo ~/.local/bin/wsproxy " + d.Base + "/static/wsproxy"}
	ls = append(ls, d.checkSum("sha256sum", "wsproxy-linux-amd64", "$HOME/.local/bin/wsproxy")...)
	return lines(append(ls, "chmod +x ~/.local/bin/wsproxy")...)
}

func (d UsageData) sshRecipe() string { return "ssh " + d.sshOpts() + " " + d.login() }

func (d UsageData) execRecipe() string { return d.sshRecipe() + " make test" }

func (d UsageData) filesRecipe() string {
	return lines(
		"sftp "+d.sshOpts()+" "+d.login(),
		"scp "+d.sshOpts()+" build.log "+d.login()+":",
		"scp "+d.sshOpts()+" "+d.login()+":results.xml .",
	)
}

func (d UsageData) knownHostsRecipe() string {
	return "echo '" + d.ID + " ssh-ed25519 AAAA…(the line from the CI log)' >> ~/.ssh/known_hosts"
}

func (d UsageData) sshConfig() string {
	return lines(
		"Host "+d.ID,
		"    User "+d.User,
		"    ProxyCommand wsproxy "+d.WSBase+wire.ClientPath("%n"),
		"    HostKeyAlias "+d.ID,
	)
}

// configSSHRecipe writes one block for every job on this server; ssh
// then names a job ID.HOST, as the agent's known_hosts line does.
func (d UsageData) configSSHRecipe() string {
	host := d.WSBase
	if u, err := url.Parse(d.WSBase); err == nil {
		host = u.Hostname()
	}
	return lines(
		"wsproxy config-ssh --server "+d.WSBase+" --user "+d.User,
		"ssh "+d.ID+"."+host,
	)
}

func (d UsageData) tcptowsRecipe() string {
	return lines(
		"curl -fsSLo ~/.local/bin/tcptows "+d.Base+"/static/tcptows && chmod +x ~/.local/bin/tcptows",
		"tcptows 10000 "+d.clientURL()+" &",
		"ssh -p 10000 -oHostKeyAlias="+d.ID+" "+d.login(),
	)
}

func holdRecipe() string {
	return lines(
		`touch "$agentdir/.hold"                  # extend: one expiry period from now`,
		`touch -d '+2 hours' "$agentdir/.hold"    # hold two hours more (GNU touch)`,
		`rm "$agentdir/.hold"                     # stop holding`,
	)
}

func holdRecipeWindows() string {
	return lines(
		`New-Item -Force "$env:agentdir\.hold"                                              # PowerShell: extend`,
		`(New-Item -Force "$env:agentdir\.hold").LastWriteTime = (Get-Date).AddHours(2)   # hold two hours more`,
		`Remove-Item "$env:agentdir\.hold"                                                 # stop holding`,
	)
}
