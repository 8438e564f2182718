package deploytest

import (
	"encoding/json"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
)

// TestGrafanaDashboard: every metric the dashboard queries, and every
// label it groups or filters by, exists in a real server's /metrics, so a
// renamed metric cannot leave a panel silently empty; and the dashboard
// covers agents, streams, bytes, refusals and setup latency.
func TestGrafanaDashboard(t *testing.T) {
	b, err := os.ReadFile(filepath.Join(repoRoot, "deploy", "grafana-dashboard.json"))
	if err != nil {
		t.Fatal(err)
	}
	var dash map[string]any
	if err := json.Unmarshal(b, &dash); err != nil {
		t.Fatalf("the dashboard is not JSON: %v", err)
	}
	exprs := dashboardQueries(dash)
	if len(exprs) < 5 {
		t.Fatalf("found only %d queries in the dashboard: %q", len(exprs), exprs)
	}
	exposed := scrape(t, get(t, startServer(t, nil).HTTP+"/metrics"))

	used := map[string]bool{}
	for _, e := range exprs {
		metrics, labels := promqlNames(e)
		if len(metrics) == 0 {
			t.Errorf("query %q names no metric", e)
		}
		have := map[string]bool{"instance": true, "job": true} // added by Prometheus when it scrapes
		for _, m := range metrics {
			used[m] = true
			if exposed[m] == nil {
				t.Errorf("query %q: metric %s is not in /metrics", e, m)
			}
			for l := range exposed[m] {
				have[l] = true
			}
		}
		for _, l := range labels {
			if !have[l] {
				t.Errorf("query %q: label %s is on none of its metrics %v in /metrics", e, l, metrics)
			}
		}
	}
	for _, m := range []string{"converge_agents_connected", "converge_client_streams_open", "converge_relayed_bytes_total",
		"converge_refusals_total", "converge_stream_setup_seconds_bucket"} {
		if !used[m] {
			t.Errorf("the dashboard does not show %s", m)
		}
	}
	checkPanels(t, dash)
}

// dashboardQueries returns every PromQL expression in a dashboard: the
// panels' targets (rows included) and the query variables' queries.
func dashboardQueries(dash map[string]any) []string {
	var exprs []string
	var walk func(v any)
	walk = func(v any) {
		switch v := v.(type) {
		case map[string]any:
			if e, ok := v["expr"].(string); ok {
				exprs = append(exprs, e)
			}
			for _, c := range v {
				walk(c)
			}
		case []any:
			for _, c := range v {
				walk(c)
			}
		}
	}
	walk(dash["panels"])
	templating, _ := dash["templating"].(map[string]any)
	list, _ := templating["list"].([]any)
	for _, v := range list {
		v, _ := v.(map[string]any)
		if v["type"] != "query" {
			continue
		}
		q := v["query"]
		if m, ok := q.(map[string]any); ok {
			q = m["query"]
		}
		if s, ok := q.(string); ok {
			exprs = append(exprs, s)
		}
	}
	return exprs
}

var (
	promString   = regexp.MustCompile(`"(?:[^"\\]|\\.)*"`)
	promMatchers = regexp.MustCompile(`\{([^}]*)\}`)
	promMatcher  = regexp.MustCompile(`([a-zA-Z_]\w*)\s*(?:=~|!~|!=|=)`)
	promRange    = regexp.MustCompile(`\[[^\]]*\]`)
	promGrouping = regexp.MustCompile(`\b(?:by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)`)
	promVariable = regexp.MustCompile(`\$\{?\w+\}?`)
	promToken    = regexp.MustCompile(`[a-zA-Z_:][\w:]*\s*\(?|[0-9][\w.]*`)
	// labelValues is Grafana's label_values(METRIC, LABEL) query.
	labelValues = regexp.MustCompile(`^\s*label_values\((.*),\s*(\w+)\s*\)\s*$`)
	promWords   = []string{"by", "without", "on", "ignoring", "group_left", "group_right", "offset", "bool", "and", "or", "unless"}
)

// promqlNames returns the metric names a PromQL expression (or a Grafana
// label_values query) reads, and the label names it groups or filters
// by. It is a tokenizer, not a parser: enough for dashboards, where a
// name followed by "(" is a function and anything else that is no
// keyword, number, variable, string, range or label set is a metric.
func promqlNames(expr string) (metrics, labels []string) {
	if m := labelValues.FindStringSubmatch(expr); m != nil {
		expr, labels = m[1], []string{m[2]}
	}
	expr = promString.ReplaceAllString(expr, `""`)
	for _, m := range promMatchers.FindAllStringSubmatch(expr, -1) {
		for _, l := range promMatcher.FindAllStringSubmatch(m[1], -1) {
			labels = append(labels, l[1])
		}
	}
	expr = promMatchers.ReplaceAllString(expr, " ")
	expr = promRange.ReplaceAllString(expr, " ")
	for _, m := range promGrouping.FindAllStringSubmatch(expr, -1) {
		for _, l := range strings.Split(m[1], ",") {
			if l = strings.TrimSpace(l); l != "" {
				labels = append(labels, l)
			}
		}
	}
	expr = promGrouping.ReplaceAllString(expr, " ")
	expr = promVariable.ReplaceAllString(expr, " ")
	for _, tok := range promToken.FindAllString(expr, -1) {
		tok = strings.TrimSpace(tok)
		if strings.HasSuffix(tok, "(") || (tok[0] >= '0' && tok[0] <= '9') || slices.Contains(promWords, tok) {
			continue
		}
		metrics = append(metrics, tok)
	}
	return metrics, labels
}

// scrape reads Prometheus text exposition: sample name → its label names.
func scrape(t *testing.T, text string) map[string]map[string]bool {
	t.Helper()
	samples := map[string]map[string]bool{}
	label := regexp.MustCompile(`(\w+)="(?:[^"\\]|\\.)*"`)
	for line := range strings.Lines(text) {
		if strings.HasPrefix(line, "#") || strings.TrimSpace(line) == "" {
			continue
		}
		end := strings.IndexAny(line, "{ ")
		if end < 0 {
			t.Fatalf("odd /metrics line %q", line)
		}
		name := line[:end]
		if samples[name] == nil {
			samples[name] = map[string]bool{}
		}
		if line[end] == '{' {
			for _, l := range label.FindAllStringSubmatch(line[end:strings.LastIndex(line, "}")+1], -1) {
				samples[name][l[1]] = true
			}
		}
	}
	return samples
}

// checkPanels checks what Grafana needs of each panel: a unique id, a
// title, the dashboard's data source variable, and targets with refIds.
func checkPanels(t *testing.T, dash map[string]any) {
	t.Helper()
	ids := map[float64]bool{}
	panels, _ := dash["panels"].([]any)
	for _, p := range panels {
		p, _ := p.(map[string]any)
		id, _ := p["id"].(float64)
		if id == 0 || ids[id] {
			t.Errorf("panel %q: id %v missing or not unique", p["title"], p["id"])
		}
		ids[id] = true
		if p["title"] == "" || p["gridPos"] == nil {
			t.Errorf("panel %v: no title or gridPos", p["id"])
		}
		if p["type"] == "row" {
			continue
		}
		if ds, _ := p["datasource"].(map[string]any); ds["uid"] != "${datasource}" {
			t.Errorf("panel %q: data source %v, want the ${datasource} variable", p["title"], p["datasource"])
		}
		targets, _ := p["targets"].([]any)
		for _, tg := range targets {
			if tg, _ := tg.(map[string]any); tg["refId"] == nil || tg["expr"] == nil {
				t.Errorf("panel %q: target %v without refId or expr", p["title"], tg)
			}
		}
	}
}

// TestPromqlNames: the tokenizer the dashboard test relies on.
func TestPromqlNames(t *testing.T) {
	for _, tc := range []struct {
		expr            string
		metrics, labels []string
	}{
		{`converge_agents_connected`, []string{"converge_agents_connected"}, nil},
		{`sum by (endpoint, reason) (rate(converge_refusals_total{instance=~"$instance", reason!="x(y)"}[$__rate_interval])) > 0`,
			[]string{"converge_refusals_total"}, []string{"instance", "reason", "endpoint", "reason"}},
		{`histogram_quantile(0.99, sum by (le) (rate(converge_stream_setup_seconds_bucket[5m])))`,
			[]string{"converge_stream_setup_seconds_bucket"}, []string{"le"}},
		{`sum(rate(a_sum[1m])) / sum(rate(a_count[1m])) offset 1h`, []string{"a_sum", "a_count"}, nil},
		{`label_values(converge_build_info, instance)`, []string{"converge_build_info"}, []string{"instance"}},
		{`up == bool 1 and on (job) b`, []string{"up", "b"}, []string{"job"}},
	} {
		m, l := promqlNames(tc.expr)
		if !slices.Equal(m, tc.metrics) || !slices.Equal(l, tc.labels) {
			t.Errorf("promqlNames(%q) = %q, %q; want %q, %q", tc.expr, m, l, tc.metrics, tc.labels)
		}
	}
}
