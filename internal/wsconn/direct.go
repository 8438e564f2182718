package wsconn

import (
	"net/http"
	"time"
)

// DirectClient is an HTTP client for Dial between our own servers (one
// replica forwarding to another): it ignores HTTP_PROXY and its kin,
// which are meant for reaching the outside, and batches writes like
// Dial's default.
var DirectClient = &http.Client{
	Transport: &http.Transport{
		DialContext:         dialBatched,
		TLSHandshakeTimeout: 15 * time.Second,
		ForceAttemptHTTP2:   false,
	},
}
