package journal

import (
	"strings"
	"testing"
	"time"
)

// TestSummaryDecisions: the summary lists what people decided about
// `agent run`'s step after who logged in, and says nothing of it when
// nobody decided.
func TestSummaryDecisions(t *testing.T) {
	t0 := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	entries := []Entry{
		{Time: t0, Kind: KindLogin, Conn: "c1", Login: &Login{User: "ci", Method: "publickey", Fingerprint: "SHA256:x", Comment: "alice@laptop", Way: WaySSH}},
		{Time: t0.Add(time.Minute), Kind: KindRunDecision, Conn: "c1", Note: "make test: retry by alice@laptop (status 2)"},
		{Time: t0.Add(2 * time.Minute), Kind: KindRunDecision, Conn: "c1", Note: "make test: pass by alice@laptop (status 0)"},
	}
	var md, plain strings.Builder
	WriteSummary(&md, entries, true)
	WriteSummary(&plain, entries, false)
	for _, want := range []string{"decided in the job", "- 03:05:05 UTC: make test: retry by alice@laptop (status 2)", "- 03:06:05 UTC: make test: pass by alice@laptop"} {
		if !strings.Contains(md.String(), want) {
			t.Errorf("markdown summary lacks %q:\n%s", want, md.String())
		}
	}
	if !strings.Contains(plain.String(), "03:06:05 UTC  make test: pass by alice@laptop") {
		t.Errorf("plain summary:\n%s", plain.String())
	}
	var none strings.Builder
	WriteSummary(&none, entries[:1], true)
	if strings.Contains(none.String(), "decided") {
		t.Errorf("a summary without decisions mentions them:\n%s", none.String())
	}
}
