package server

import (
	"bytes"
	"context"
	"io"
	"net"
	"net/http"
	"testing"
	"time"

	"github.com/coder/websocket"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/converge-ci/converge/internal/wire"
	"github.com/converge-ci/converge/internal/wsconn"
)

// scrape fetches /metrics and parses it as Prometheus would.
func scrape(t *testing.T, base string) map[string]*dto.MetricFamily {
	t.Helper()
	code, hdr, body := get(t, base+"/metrics")
	if code != 200 {
		t.Fatalf("GET /metrics = %d", code)
	}
	p := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := p.TextToMetricFamilies(bytes.NewReader([]byte(body)))
	if err != nil {
		t.Fatalf("parse /metrics (%s): %v\n%s", hdr.Get("Content-Type"), err, body)
	}
	return fams
}

// value is the value of the series of family name whose labels include
// labels (name, value pairs).
func value(t *testing.T, fams map[string]*dto.MetricFamily, name string, labels ...string) float64 {
	t.Helper()
	f := fams[name]
	if f == nil {
		t.Fatalf("no metric %s", name)
	}
next:
	for _, m := range f.Metric {
		for i := 0; i+1 < len(labels); i += 2 {
			found := false
			for _, l := range m.Label {
				if l.GetName() == labels[i] && l.GetValue() == labels[i+1] {
					found = true
				}
			}
			if !found {
				continue next
			}
		}
		switch {
		case m.Counter != nil:
			return m.Counter.GetValue()
		case m.Gauge != nil:
			return m.Gauge.GetValue()
		case m.Histogram != nil:
			return float64(m.Histogram.GetSampleCount())
		}
	}
	t.Fatalf("no series %s%v", name, labels)
	return 0
}

func TestMetrics(t *testing.T) {
	r := runServer(t)
	before := scrape(t, r.http())
	checkMetrics(t, "fresh server", before, []metricWant{
		{"converge_agents_connected", nil, 0},
		{"converge_client_streams_open", nil, 0},
		{"converge_agent_registrations_total", nil, 0},
		{"converge_relayed_bytes_total", []string{"direction", "to_agent"}, 0},
		{"converge_relayed_bytes_total", []string{"direction", "to_client"}, 0},
		{"converge_refusals_total", []string{"endpoint", "client", "reason", "unknown_id"}, 0},
		{"converge_stream_setup_seconds", nil, 0},
	})

	a := dialAgent(t, r.ws(), "metrics-1", wire.Info{Hostname: "h"})
	// Refusals: a second agent for the same ID, a client for an unknown ID.
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := wsconn.Dial(ctx, r.ws()+"/agent/metrics-1", wsconn.Options{Subprotocols: []string{wire.ControlProtocol}}); err == nil {
		t.Fatal("second agent with the same ID was accepted")
	}
	if _, err := wsconn.Dial(ctx, r.ws()+"/client/nobody", wsconn.Options{}); err == nil {
		t.Fatal("client for an unknown ID was accepted")
	}

	// One client stream carrying 1000 bytes each way through an echoing agent.
	dialed := make(chan struct{})
	go func() { defer close(dialed); a.echoStream(t, r.ws()) }()
	c, err := wsconn.Dial(ctx, r.ws()+"/client/metrics-1", wsconn.Options{})
	if err != nil {
		t.Fatal(err)
	}
	<-dialed
	nc := websocket.NetConn(ctx, c, websocket.MessageBinary)
	echoRoundTrip(t, nc, 1000)

	// The server counts a write to the client when it returns, which may be
	// just after the client read the bytes.
	for value(t, scrape(t, r.http()), "converge_relayed_bytes_total", "direction", "to_client") < 1000 {
		time.Sleep(10 * time.Millisecond)
	}
	during := scrape(t, r.http())
	checkMetrics(t, "one agent, one stream", during, []metricWant{
		{"converge_agents_connected", nil, 1},
		{"converge_client_streams_open", nil, 1},
		{"converge_agent_registrations_total", nil, 1},
		{"converge_relayed_bytes_total", []string{"direction", "to_agent"}, 1000},
		{"converge_relayed_bytes_total", []string{"direction", "to_client"}, 1000},
		{"converge_refusals_total", []string{"endpoint", "agent", "reason", "id_in_use"}, 1},
		{"converge_refusals_total", []string{"endpoint", "client", "reason", "unknown_id"}, 1},
		{"converge_stream_setup_seconds", nil, 1},
	})
	if v := value(t, during, "converge_build_info", "version", "dev"); v != 1 {
		t.Errorf("converge_build_info = %v", v)
	}
	if during["go_goroutines"] == nil || during["process_open_fds"] == nil {
		t.Error("Go runtime and process metrics missing")
	}

	// The stream's end and the agent's departure show.
	nc.Close()
	a.ws.Close(websocket.StatusNormalClosure, "")
	for {
		after := scrape(t, r.http())
		if value(t, after, "converge_client_streams_open") == 0 && value(t, after, "converge_agents_connected") == 0 {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	if code, _, _ := get(t, r.http()+"/healthz"); code != http.StatusOK {
		t.Errorf("/healthz = %d", code)
	}
}

// metricWant is one series and the value a test expects of it.
type metricWant struct {
	name   string
	labels []string
	want   float64
}

// checkMetrics reports every series in wants whose value in m differs.
func checkMetrics(t *testing.T, when string, m map[string]*dto.MetricFamily, wants []metricWant) {
	t.Helper()
	for _, w := range wants {
		if v := value(t, m, w.name, w.labels...); v != w.want {
			t.Errorf("%s: %s%v = %v, want %v", when, w.name, w.labels, v, w.want)
		}
	}
}

// echoRoundTrip writes n bytes to nc and reads n bytes back.
func echoRoundTrip(t *testing.T, nc net.Conn, n int) {
	t.Helper()
	if _, err := nc.Write(bytes.Repeat([]byte("x"), n)); err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadFull(nc, make([]byte, n)); err != nil {
		t.Fatal(err)
	}
}
