package server

import (
	"context"
	"fmt"
	"log/slog"
	"net/http"
	"time"

	"github.com/coder/websocket"

	"github.com/converge-ci/converge/internal/leg"
	"github.com/converge-ci/converge/internal/splice"
	"github.com/converge-ci/converge/internal/wire"
)

// handleClient is GET /client/{id}: a user's connection to an agent. It is
// refused with 404 before the upgrade when no agent holds the ID. After the
// upgrade (to a WebSocket, or to a raw stream when asked, see internal/leg), the
// client is spliced to an idle stream of the agent's pool, or to one the
// agent is asked to dial back; the SSH bytes pass unchanged both ways.
func (s *Server) handleClient(w http.ResponseWriter, r *http.Request) {
	leg.Advertise(w, r) // refusals below are final, not a cue to retry as a WebSocket
	id := r.PathValue("id")
	if err := wire.ValidID(id); err != nil {
		s.metrics.refused(endpointClient, reasonBadRequest)
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	remote := s.remoteAddr(r)
	fwdAddr, forwarded, err := s.peers.forwardedFrom(r, forwardClient, id, "")
	if err != nil {
		s.log.Warn("client refused", "id", id, "remote", remote, "reason", reasonBadRequest, "error", err)
		s.metrics.refused(endpointClient, reasonBadRequest)
		http.Error(w, err.Error(), http.StatusForbidden)
		return
	}
	a, here, owner, err := s.reg.Route(r.Context(), id)
	if forwarded { // from the client at fwdAddr; served here or not at all: one hop
		remote, owner = fwdAddr, ""
	}
	if err != nil && !forwarded { // Redis did not answer, even retried: not a 404
		s.log.Warn("client refused", "id", id, "remote", remote, "reason", reasonRegistryUnavailable, "error", err)
		s.metrics.refused(endpointClient, reasonRegistryUnavailable)
		refusalOf(err, id, "").answer(w) // 503: retry shortly
		return
	}
	if owner == "" && (!here || !a.ready.Load()) {
		s.log.Info("client refused", "id", id, "remote", remote, "reason", reasonUnknownID)
		s.metrics.refused(endpointClient, reasonUnknownID)
		http.Error(w, fmt.Sprintf("no agent is connected with ID %q; check the ID the agent printed", id), http.StatusNotFound)
		return
	}
	if limit := s.streamLimit.acquire(remote); limit != nil {
		ref := refusalOf(limit, id, reasonStreamLimit)
		s.log.Info("client refused", "id", id, "remote", remote, "reason", ref.reason)
		s.metrics.refused(endpointClient, ref.reason)
		ref.answer(w)
		return
	}
	defer s.streamLimit.release(remote)
	if owner != "" {
		s.forward(w, r, forwardClient, id, "", owner, remote)
		return
	}
	protocol := "" // the first the client offers that the agent does
	for _, p := range leg.Offered(r) {
		if a.offers(p) {
			protocol = p
			break
		}
	}
	if a.key != nil { // the relay's word; the SSH handshake checks it end to end
		w.Header().Set(wire.HostKeyHeader, wire.Fingerprint(a.key))
	}
	if v := a.who.Verified(); v != "" {
		w.Header().Set(wire.VerifiedHeader, v)
	}
	cl, err := leg.Accept(w, r, protocol)
	if err != nil {
		return
	}
	release, ok := s.conns.add(cl)
	if !ok {
		s.metrics.refused(endpointClient, reasonShuttingDown)
		cl.Close(websocket.StatusGoingAway, "server shutting down")
		return
	}
	defer release()
	s.relay(a, cl, protocol, s.log.With("id", id, "remote", remote))
}

// relay takes a stream of agent a for the client leg cl, which speaks
// protocol (see streamFor), and splices the two until either ends.
func (s *Server) relay(a *agentConn, cl *leg.Conn, protocol string, log *slog.Logger) {
	start := time.Now()
	ag, err := s.streamFor(a, protocol)
	if err != nil {
		log.Info("client refused", "reason", reasonAgentUnavailable, "error", err)
		s.metrics.refused(endpointClient, reasonAgentUnavailable)
		cl.Close(websocket.StatusTryAgainLater, "agent did not answer: "+err.Error())
		return
	}
	releaseStream, ok := s.conns.add(ag.Conn)
	if !ok { // the drain began while the stream came in, and closed the client's leg
		ag.Close(websocket.StatusGoingAway, "server shutting down")
		return
	}
	defer releaseStream()
	setup := time.Since(start)
	log.Info("client connected", "protocol", protocol, "stream", ag.source(), "legs", cl.Kind()+"/"+ag.Kind(),
		"setup", setup.Round(time.Microsecond))
	s.metrics.agentStreams.WithLabelValues(ag.source()).Inc()
	s.metrics.streamLegs.WithLabelValues(cl.Kind(), ag.Kind()).Inc()
	defer s.streamOpen(a, setup)()

	ctx, cancel := context.WithCancel(s.ctx)
	defer cancel()
	res := splice.Counted(cl.Relayed(ctx), ag.relayed(ctx), s.metrics.countToAgent, s.metrics.countToClient)
	log.Info("client disconnected", "duration", time.Since(start).Round(time.Millisecond),
		"bytes_to_agent", res.AToB, "bytes_to_client", res.BToA, "reason", errString(res.Err))
}

// requestStream asks agent a to dial back for one client stream and waits
// for it, at most StreamTimeout.
func (s *Server) requestStream(a *agentConn, protocol string) (*leg.Conn, error) {
	token, streams, stopWaiting := s.pending.expect(a.id)
	defer stopWaiting()

	ctx, cancel := context.WithTimeout(s.ctx, s.cfg.StreamTimeout)
	defer cancel()
	if err := a.send(ctx, wire.Message{Type: wire.TypeDial, Dial: &wire.Dial{Token: token, Protocol: protocol}}); err != nil {
		return nil, fmt.Errorf("ask agent to dial back: %w", err)
	}
	select {
	case c := <-streams:
		return c, nil
	case <-ctx.Done():
		return nil, fmt.Errorf("no stream from the agent within %v", s.cfg.StreamTimeout)
	}
}

// handleStream is GET /agent/{id}/stream/{token}: an agent dialling back
// for a waiting client, or opening an idle stream for its pool (see
// servePooled), with a WebSocket or a raw stream. The token, given only
// to the agent over its control connection, authorises it.
func (s *Server) handleStream(w http.ResponseWriter, r *http.Request) {
	leg.Advertise(w, r)
	id, token := r.PathValue("id"), r.PathValue("token")
	if wire.ValidID(id) != nil || wire.ValidToken(token) != nil {
		http.Error(w, "malformed stream request", http.StatusBadRequest)
		return
	}
	if !s.pending.waiting(id, token) {
		if s.servePooled(w, r, id, token) || s.forwardStream(w, r, id, token) {
			return
		}
		http.Error(w, "no client is waiting for this stream (it may have given up)", http.StatusNotFound)
		return
	}
	c, err := leg.Accept(w, r, wire.StreamProtocol)
	if err != nil {
		return
	}
	release, ok := s.conns.add(c)
	if !ok {
		c.Close(websocket.StatusGoingAway, "server shutting down")
		return
	}
	defer release() // the client handler holds c itself once it has it
	if !s.pending.deliver(id, token, c) {
		c.Close(websocket.StatusTryAgainLater, "the client stopped waiting")
	}
}
