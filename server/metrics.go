package server

import (
	"net/http"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/converge-ci/converge/internal/leg"
	"github.com/converge-ci/converge/server/internal/policy"
	"github.com/converge-ci/converge/server/internal/registry"
)

// metrics are the server's Prometheus metrics, in a registry of their own
// so that nothing else linked into the binary can add to /metrics. They
// carry no rendezvous IDs: IDs are capabilities, and labels by ID would
// grow without bound.
type metrics struct {
	reg           *prometheus.Registry
	streamsOpen   prometheus.Gauge
	toAgent       prometheus.Counter
	toClient      prometheus.Counter
	registrations prometheus.Counter
	refusals      *prometheus.CounterVec
	setup         prometheus.Histogram
	agentStreams  *prometheus.CounterVec // by source: pool, dial
	streamLegs    *prometheus.CounterVec // by the client's and the agent's leg: raw, websocket
	poolIdle      prometheus.Gauge
	forwarded     *prometheus.CounterVec // by kind: client, stream
	forwardedOpen prometheus.Gauge
	admissions    *prometheus.CounterVec // by how the agent was let in: open, token, oidc
}

// Refusal endpoints and reasons, as labels of converge_refusals_total and
// as the reason of the matching log lines.
const (
	endpointAgent  = "agent"
	endpointClient = "client"

	reasonIDInUse          = "id_in_use"
	reasonIDReserved       = "id_reserved"
	reasonBadRequest       = "bad_request"
	reasonUnknownID        = "unknown_id"
	reasonAgentUnavailable = "agent_unavailable"
	reasonShuttingDown     = "shutting_down"
	reasonAgentLimit       = "agent_limit"  // too many agents from one address (IPv6: one /64)
	reasonStreamLimit      = "stream_limit" // too many client streams from one address (IPv6: one /64)
	reasonServerFull       = "server_full"  // the server holds its most agents, or client streams
	reasonBusy             = "busy"         // an agent waited 10 s for a place among those registering (MaxRegistering)
	// reasonRegistryUnavailable: Redis did not answer a lookup of an ID
	// not held here, retried for registry.RetryWindow.
	reasonRegistryUnavailable = "registry_unavailable"

	reasonRepoLimit     = "repo_limit"     // too many agents of one repository (--max-agents-per-repo)
	reasonForeignOrigin = "foreign_origin" // a web page served elsewhere, through a visitor's browser
)

// newMetrics registers the metrics; agents reports the number of connected
// agents when scraped.
func newMetrics(version string, agents func() int) *metrics {
	m := &metrics{
		reg: prometheus.NewRegistry(),
		streamsOpen: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "converge_client_streams_open",
			Help: "Client connections currently spliced to an agent.",
		}),
		registrations: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "converge_agent_registrations_total",
			Help: "Agent registrations accepted (first connections and reconnections).",
		}),
		refusals: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "converge_refusals_total",
			Help: "Agent and client connections refused, by endpoint (agent, client) and reason.",
		}, []string{"endpoint", "reason"}),
		setup: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "converge_stream_setup_seconds",
			Help:    "Time from a client's upgrade to its agent's stream arriving.",
			Buckets: []float64{.002, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30},
		}),
	}
	m.agentStreams = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "converge_agent_streams_total",
		Help: "Agents' streams spliced to clients, by source: pool (idle, opened before the client came) or dial (dialled back for the client).",
	}, []string{"source"})
	m.agentStreams.WithLabelValues("pool")
	m.agentStreams.WithLabelValues("dial")
	m.streamLegs = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "converge_stream_legs_total",
		Help: "Client streams spliced, by the transport of the client's and of the agent's leg: raw (spliced in the kernel when both are) or websocket.",
	}, []string{"client", "agent"})
	for _, c := range []string{leg.KindRaw, leg.KindWebSocket} {
		for _, a := range []string{leg.KindRaw, leg.KindWebSocket} {
			m.streamLegs.WithLabelValues(c, a)
		}
	}
	m.poolIdle = prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "converge_pooled_streams_idle",
		Help: "Idle streams agents keep open for their next clients (see --stream-pool).",
	})
	m.forwarded = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "converge_forwarded_streams_total",
		Help: "Streams this replica forwarded to the replica holding their agent, by kind (client, stream: an agent's dial-back).",
	}, []string{"kind"})
	m.forwardedOpen = prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "converge_forwarded_streams_open",
		Help: "Streams this replica forwards to another now.",
	})
	m.admissions = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "converge_agent_admissions_total",
		Help: "Agents let in by the registration policy, by how: open (nothing checked), token (a shared token), oidc (a verified CI identity token).",
	}, []string{"via"})
	for _, v := range []string{"open", "token", "oidc"} {
		m.admissions.WithLabelValues(v)
	}
	bytes := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "converge_relayed_bytes_total",
		Help: "Bytes relayed between clients and agents, by direction (to_agent, to_client).",
	}, []string{"direction"})
	m.toAgent = bytes.WithLabelValues("to_agent")
	m.toClient = bytes.WithLabelValues("to_client")
	m.presetRefusals()
	m.reg.MustRegister(
		m.streamsOpen, bytes, m.registrations, m.refusals, m.setup, m.agentStreams, m.streamLegs, m.poolIdle, m.forwarded, m.forwardedOpen, m.admissions,
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "converge_agents_connected",
			Help: "Agents with a registered control connection.",
		}, func() float64 { return float64(agents()) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name:        "converge_build_info",
			Help:        "Always 1; the version label is the server's version.",
			ConstLabels: prometheus.Labels{"version": version},
		}, func() float64 { return 1 }),
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
	)
	return m
}

func (m *metrics) handler() http.Handler {
	return promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{})
}

// presetRefusals initialises the refusal series, so that rate() works
// from the first scrape.
func (m *metrics) presetRefusals() {
	for _, r := range []string{reasonIDInUse, reasonIDReserved, reasonBadRequest, reasonShuttingDown, reasonAgentLimit, reasonServerFull, reasonForeignOrigin,
		policy.ReasonToken, policy.ReasonOIDC, reasonRepoLimit} {
		m.refusals.WithLabelValues(endpointAgent, r)
	}
	for _, r := range []string{reasonUnknownID, reasonAgentUnavailable, reasonBadRequest, reasonShuttingDown, reasonStreamLimit, reasonServerFull, reasonForeignOrigin, reasonRegistryUnavailable} {
		m.refusals.WithLabelValues(endpointClient, r)
	}
}

// watchRedis serves, on /metrics, what a replica's Redis client saw go
// wrong.
func (m *metrics) watchRedis(w *registry.Watch) {
	m.reg.MustRegister(
		prometheus.NewCounterFunc(prometheus.CounterOpts{
			Name: "converge_redis_errors_total",
			Help: "Redis commands of this replica that failed (Redis unreachable, no master, a timeout). Replicas only.",
		}, func() float64 { return float64(w.Errors.Load()) }),
		prometheus.NewCounterFunc(prometheus.CounterOpts{
			Name: "converge_redis_failovers_total",
			Help: "Changes of Redis master this replica followed (--redis-sentinel). Replicas only.",
		}, func() float64 { return float64(w.Failovers.Load()) }),
	)
}

// refused counts one refusal.
func (m *metrics) refused(endpoint, reason string) {
	m.refusals.WithLabelValues(endpoint, reason).Inc()
}

// admitted counts one agent let in by the policy, via how.
func (m *metrics) admitted(via string) { m.admissions.WithLabelValues(via).Inc() }

// countToAgent and countToClient add bytes a splice moved to
// converge_relayed_bytes_total as they flow, not only when the stream
// ends.
func (m *metrics) countToAgent(n int64)  { m.toAgent.Add(float64(n)) }
func (m *metrics) countToClient(n int64) { m.toClient.Add(float64(n)) }
