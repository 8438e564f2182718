package server

import (
	"errors"
	"fmt"
	"net/http"

	"github.com/converge-ci/converge/server/internal/registry"
)

// A refusal is how the server answers a registration or a client stream it
// refuses before the upgrade: the HTTP status and message the peer gets,
// and the reason metrics and logs count it by ("" for none: an error of
// the server's, not a refusal of the peer).
type refusal struct {
	status int
	reason string
	msg    string
}

// refusalOf maps err, refusing a registration of or a client stream to
// id, to its answer; perAddr is the reason of a refusal at a per-address
// limit (reasonAgentLimit, reasonStreamLimit). This is the one place the
// registry's errors become HTTP statuses: 429 when the peer's address is
// at its limit, 503 (try later, or elsewhere) when the server is full or
// its registry unavailable, 409 for an ID held or reserved.
func refusalOf(err error, id, perAddr string) refusal {
	var limit *registry.LimitError
	switch {
	case errors.As(err, &limit) && limit.Group == "":
		return refusal{http.StatusServiceUnavailable, reasonServerFull, limit.Error()}
	case errors.As(err, &limit):
		return refusal{http.StatusTooManyRequests, perAddr, limit.Error()}
	case errors.Is(err, registry.ErrIDInUse):
		return refusal{http.StatusConflict, reasonIDInUse, fmt.Sprintf("rendezvous ID %q is already used by a connected agent; choose another --id", id)}
	case errors.Is(err, registry.ErrIDReserved):
		until := "for a while"
		var res *registry.ReservedError
		if errors.As(err, &res) {
			until = "until " + res.Until.UTC().Format("15:04:05 UTC")
		}
		return refusal{http.StatusConflict, reasonIDReserved, fmt.Sprintf("rendezvous ID %q is reserved %s for an agent whose link dropped, unless it comes back first (an agent that ends on purpose frees its ID at once); choose another --id, or wait", id, until)}
	case errors.Is(err, registry.ErrUnavailable):
		return refusal{http.StatusServiceUnavailable, "", "the server cannot reach its registry; retry shortly"}
	}
	return refusal{http.StatusInternalServerError, "", err.Error()}
}

// answer writes the refusal to w.
func (r refusal) answer(w http.ResponseWriter) { http.Error(w, r.msg, r.status) }
