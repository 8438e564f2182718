package agent

import (
	gossh "golang.org/x/crypto/ssh"
)

// knownHostsLine is a line for ~/.ssh/known_hosts naming the host by alias.
func knownHostsLine(alias string, key gossh.PublicKey) string {
	return alias + " " + string(trimNewline(gossh.MarshalAuthorizedKey(key)))
}

func trimNewline(b []byte) []byte {
	for len(b) > 0 && (b[len(b)-1] == '\n' || b[len(b)-1] == '\r') {
		b = b[:len(b)-1]
	}
	return b
}
