package journal

import (
	"fmt"
	"io"
	"strings"
	"time"
)

// WriteSummary writes who logged in, according to entries: each login
// with its key (fingerprint and comment, or certificate), way in, when,
// for how long, and how many sessions, as a Markdown table (for a CI
// job's summary) or as plain lines (for a job log). A login with no
// logout is counted up to the last entry.
func WriteSummary(w io.Writer, entries []Entry, markdown bool) {
	people := People(entries)
	var last time.Time
	if len(entries) > 0 {
		last = entries[len(entries)-1].Time
	}
	title := "Converge: who logged in"
	if len(people) == 0 {
		if markdown {
			fmt.Fprintf(w, "### %s\n\nNobody logged in.\n\n", title)
		} else {
			fmt.Fprintf(w, "%s: nobody.\n", title)
		}
		return
	}
	if markdown {
		fmt.Fprintf(w, "### %s\n\n| Who | Key | Way in | At (UTC) | For | Sessions |\n|---|---|---|---|---|---|\n", title)
	} else {
		fmt.Fprintf(w, "%s:\n", title)
	}
	for _, p := range people {
		until := p.Until
		if until.IsZero() {
			until = last
		}
		key := p.Login.Fingerprint
		if p.Login.CertKeyID != "" {
			key = fmt.Sprintf("certificate %q serial %d, principal %s, of %s", p.Login.CertKeyID, p.Login.CertSerial, p.Login.Principal, key)
		}
		if key == "" {
			key = p.Login.Method
		}
		at, dur := p.Since.UTC().Format("2006-01-02 15:04:05"), until.Sub(p.Since).Round(time.Second)
		if markdown {
			fmt.Fprintf(w, "| %s | `%s` | %s | %s | %s | %d |\n", mdEscape(p.Login.Name()), key, p.Login.Way, at, dur, p.Count)
		} else {
			fmt.Fprintf(w, "  %s  %s  via %s  at %s UTC  for %s  %d session(s)\n", p.Login.Name(), key, p.Login.Way, at, dur, p.Count)
		}
	}
	if markdown {
		fmt.Fprintln(w)
	}
	writeDecisions(w, entries, markdown)
}

// writeDecisions lists what people decided about `agent run`'s step
// (KindRunDecision), after the logins; nothing when nobody did.
func writeDecisions(w io.Writer, entries []Entry, markdown bool) {
	first := true
	for _, e := range entries {
		if e.Kind != KindRunDecision {
			continue
		}
		if first {
			if markdown {
				fmt.Fprint(w, "**The failed step, decided in the job:**\n\n")
			} else {
				fmt.Fprintln(w, "The failed step, decided in the job:")
			}
			first = false
		}
		at := e.Time.UTC().Format("15:04:05")
		if markdown {
			fmt.Fprintf(w, "- %s UTC: %s\n", at, mdEscape(e.Note))
		} else {
			fmt.Fprintf(w, "  %s UTC  %s\n", at, e.Note)
		}
	}
	if !first && markdown {
		fmt.Fprintln(w)
	}
}

// mdEscape keeps a comment from breaking the table or adding markup.
func mdEscape(s string) string {
	r := strings.NewReplacer("|", `\|`, "<", "&lt;", ">", "&gt;", "`", "'", "\n", " ", "[", `\[`, "]", `\]`, "*", `\*`, "_", `\_`)
	return r.Replace(s)
}
