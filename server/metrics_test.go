package server

import (
	"bytes"
	"context"
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
	for _, tc := range []struct {
		name   string
		labels []string
	}{
		{"converge_agents_connected", nil},
		{"converge_client_streams_open", nil},
		{"converge_agent_registrations_total", nil},
		{"converge_relayed_bytes_total", []string{"direction", "to_agent"}},
		{"converge_relayed_bytes_total", []string{"direction", "to_client"}},
		{"converge_refusals_total", []string{"endpoint", "client", "reason", "unknown_id"}},
		{"converge_stream_setup_seconds", nil},
	} {
		if v := value(t, before, tc.name, tc.labels...); v != 0 {
			t.Errorf("fresh server: %s%v = %v, want 0", tc.name, tc.labels, v)
		}
	}

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
	msg := bytes.Repeat([]byte("x"), 1000)
	if _, err := nc.Write(msg); err != nil {
		t.Fatal(err)
	}
	back := make([]byte, len(msg))
	for n := 0; n < len(back); {
		k, err := nc.Read(back[n:])
		if err != nil {
			t.Fatal(err)
		}
		n += k
	}

	// The server counts a write to the client when it returns, which may be
	// just after the client read the bytes.
	for value(t, scrape(t, r.http()), "converge_relayed_bytes_total", "direction", "to_client") < 1000 {
		time.Sleep(10 * time.Millisecond)
	}
	during := scrape(t, r.http())
	for _, tc := range []struct {
		name   string
		labels []string
		want   float64
	}{
		{"converge_agents_connected", nil, 1},
		{"converge_client_streams_open", nil, 1},
		{"converge_agent_registrations_total", nil, 1},
		{"converge_relayed_bytes_total", []string{"direction", "to_agent"}, 1000},
		{"converge_relayed_bytes_total", []string{"direction", "to_client"}, 1000},
		{"converge_refusals_total", []string{"endpoint", "agent", "reason", "id_in_use"}, 1},
		{"converge_refusals_total", []string{"endpoint", "client", "reason", "unknown_id"}, 1},
		{"converge_stream_setup_seconds", nil, 1},
	} {
		if v := value(t, during, tc.name, tc.labels...); v != tc.want {
			t.Errorf("%s%v = %v, want %v", tc.name, tc.labels, v, tc.want)
		}
	}
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
