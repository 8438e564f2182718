package agent

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"time"

	gossh "golang.org/x/crypto/ssh"
)

const (
	// keysFetchTimeout bounds fetching one --authorized-keys-url at start.
	keysFetchTimeout = 15 * time.Second
	// maxKeysSize bounds what one URL may send: a forge's list of a user's
	// keys is a few KiB.
	maxKeysSize = 256 << 10
)

// fetchAuthorizedKeys gets authorized_keys lines from rawURL, such as a
// forge's https://github.com/USER.keys. Any failure (not http(s), a
// status other than 200, more than maxKeysSize, a bad line) is an error
// that names the URL: the user asked for these keys, and starting without
// them would lock them out. client nil means http.DefaultClient.
func fetchAuthorizedKeys(ctx context.Context, client *http.Client, rawURL string) ([]gossh.PublicKey, error) {
	u, err := url.Parse(rawURL)
	if err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" {
		return nil, fmt.Errorf("authorized keys URL %q: give an http(s) URL such as https://github.com/USER.keys", rawURL)
	}
	if client == nil {
		client = http.DefaultClient
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u.String(), nil)
	if err != nil {
		return nil, fmt.Errorf("authorized keys URL %s: %w", rawURL, err)
	}
	req.Header.Set("Accept", "text/plain")
	resp, err := client.Do(req)
	if err != nil {
		if errors.Is(err, context.DeadlineExceeded) {
			return nil, fmt.Errorf("fetch authorized keys from %s: no answer within %s; check the URL and the job's network", rawURL, keysFetchTimeout)
		}
		return nil, fmt.Errorf("fetch authorized keys from %s: %w; check the URL and the job's network", rawURL, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("fetch authorized keys from %s: %s; check the user name in the URL", rawURL, resp.Status)
	}
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxKeysSize+1))
	if err != nil {
		return nil, fmt.Errorf("fetch authorized keys from %s: %w", rawURL, err)
	}
	if len(body) > maxKeysSize {
		return nil, fmt.Errorf("fetch authorized keys from %s: more than %d KiB; is this a list of public keys?", rawURL, maxKeysSize>>10)
	}
	keys, err := parseAuthorizedKeys(rawURL, body)
	if err != nil {
		return nil, fmt.Errorf("authorized keys from %s are not authorized_keys lines: %w", rawURL, err)
	}
	return keys, nil
}
