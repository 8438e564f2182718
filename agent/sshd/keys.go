package sshd

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/netip"
	"net/url"
	"strings"
	"time"
)

const (
	// keysFetchTimeout bounds fetching one --authorized-keys-url at start.
	keysFetchTimeout = 15 * time.Second
	// maxKeysSize bounds what one URL may send: a forge's list of a user's
	// keys is a few KiB.
	maxKeysSize = 256 << 10
)

// errInsecureKeysURL marks a keys URL refused because its keys could be
// swapped on the way: plain http to a host that is not loopback, or a
// redirect from https to http.
var errInsecureKeysURL = errors.New("authorized keys must come over https")

// fetchAuthorizedKeys gets authorized_keys lines from rawURL, such as a
// forge's https://github.com/USER.keys. Any failure (not https nor http to
// a loopback host, a redirect that drops https, a status other than 200,
// more than maxKeysSize, a bad line) is an error that names the URL: the
// user asked for these keys, and starting without them would lock them
// out. client nil means http.DefaultClient; it is not modified.
func fetchAuthorizedKeys(ctx context.Context, client *http.Client, rawURL string) ([]authKey, error) {
	body, err := FetchKeyLines(ctx, client, rawURL)
	if err != nil {
		return nil, err
	}
	keys, err := parseAuthorizedKeys(rawURL, body)
	if err != nil {
		return nil, fmt.Errorf("authorized keys from %s are not authorized_keys lines: %w", rawURL, err)
	}
	return keys, nil
}

// FetchKeyLines gets the body of a keys URL (authorized keys, or the
// recipients of recordings) under the rules of fetchAuthorizedKeys: https
// (http only to loopback), no redirect that drops https, status 200, at
// most 256 KiB. Errors name the URL and say what to check.
func FetchKeyLines(ctx context.Context, client *http.Client, rawURL string) ([]byte, error) {
	if err := checkKeysURL(rawURL); err != nil {
		return nil, err
	}
	if client == nil {
		client = http.DefaultClient
	}
	c := *client
	c.CheckRedirect = func(req *http.Request, via []*http.Request) error {
		if err := checkKeysRedirect(req, via); err != nil {
			return err
		}
		if client.CheckRedirect != nil {
			return client.CheckRedirect(req, via)
		}
		return nil
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, rawURL, nil)
	if err != nil {
		return nil, fmt.Errorf("authorized keys URL %s: %w", rawURL, err)
	}
	req.Header.Set("Accept", "text/plain")
	resp, err := c.Do(req)
	if err != nil {
		if errors.Is(err, errInsecureKeysURL) {
			return nil, fmt.Errorf("fetch authorized keys from %s: %w", rawURL, errors.Unwrap(err))
		}
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
	return body, nil
}

// maxKeysRedirects is how many redirects a keys URL may take, as
// net/http's default.
const maxKeysRedirects = 10

// checkKeysURL accepts an https URL, or an http one to a loopback host
// (127.0.0.0/8, ::1, localhost), which only tests and the job itself can
// serve.
func checkKeysURL(rawURL string) error {
	u, err := url.Parse(rawURL)
	if err != nil || u.Host == "" || u.Hostname() == "" || (u.Scheme != "https" && u.Scheme != "http") {
		return fmt.Errorf("authorized keys URL %q: give an https URL such as https://github.com/USER.keys", rawURL)
	}
	if u.Scheme == "http" && !loopbackHost(u.Hostname()) {
		return fmt.Errorf("%w: %s is plain http, so anyone on the network path could swap in their own keys; use https:// (http is allowed only to loopback hosts, for tests)", errInsecureKeysURL, rawURL)
	}
	return nil
}

// checkKeysRedirect refuses a redirect that drops https, whatever the
// host, and one to a URL checkKeysURL refuses.
func checkKeysRedirect(req *http.Request, via []*http.Request) error {
	if len(via) >= maxKeysRedirects {
		return fmt.Errorf("stopped after %d redirects", maxKeysRedirects)
	}
	for _, prev := range via {
		if prev.URL.Scheme == "https" && req.URL.Scheme != "https" {
			return fmt.Errorf("%w: refusing the redirect from https to http (%s to %s); give the final https URL directly", errInsecureKeysURL, prev.URL, req.URL)
		}
	}
	return checkKeysURL(req.URL.String())
}

// loopbackHost reports whether host names this machine for certain:
// "localhost" or a loopback IP address, not a name that merely resolves
// to one.
func loopbackHost(host string) bool {
	if strings.EqualFold(host, "localhost") {
		return true
	}
	ip, err := netip.ParseAddr(host)
	return err == nil && ip.Unmap().IsLoopback()
}
