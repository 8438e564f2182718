package recording

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"strings"

	"filippo.io/age"
	"filippo.io/age/agessh"
	gossh "golang.org/x/crypto/ssh"
)

// ParseRecipients reads the people a recording is encrypted to from
// data, one per line: age recipients (age1...) and SSH public keys in
// authorized_keys form (ssh-ed25519 and ssh-rsa, with or without a
// comment, as a forge's USER.keys lists them). Blank lines and # comments
// are skipped. Other SSH key types (ECDSA, security keys) cannot be age
// recipients: they are returned in skipped, and the rest are used. name
// says where data came from, in errors. It fails when a line is neither,
// or when no line gives a recipient.
func ParseRecipients(name string, data []byte) (rs []age.Recipient, skipped []string, err error) {
	var errs []error
	sc := bufio.NewScanner(bytes.NewReader(data))
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" || line[0] == '#' {
			continue
		}
		if strings.HasPrefix(line, "age1") {
			r, err := age.ParseX25519Recipient(strings.Fields(line)[0])
			if err != nil {
				errs = append(errs, fmt.Errorf("%s:%d: %v", name, n, err))
				continue
			}
			rs = append(rs, r)
			continue
		}
		pk, _, _, _, err := gossh.ParseAuthorizedKey([]byte(line))
		if err != nil {
			errs = append(errs, fmt.Errorf("%s:%d: neither an age recipient (age1...) nor an SSH public key: %v", name, n, err))
			continue
		}
		var r age.Recipient
		switch pk.Type() {
		case gossh.KeyAlgoED25519:
			r, err = agessh.NewEd25519Recipient(pk)
		case gossh.KeyAlgoRSA:
			r, err = agessh.NewRSARecipient(pk)
		default:
			skipped = append(skipped, pk.Type()+" "+gossh.FingerprintSHA256(pk))
			continue
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("%s:%d: %v", name, n, err))
			continue
		}
		rs = append(rs, r)
	}
	if err := sc.Err(); err != nil {
		errs = append(errs, err)
	}
	if err := errors.Join(errs...); err != nil {
		return nil, skipped, err
	}
	if len(rs) == 0 {
		return nil, skipped, fmt.Errorf("%s: no recipient to encrypt recordings to: give age1... recipients or ssh-ed25519 / ssh-rsa public keys", name)
	}
	return rs, skipped, nil
}
