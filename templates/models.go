package templates

import (
	"fmt"
	"time"
)

// Site is what every page's frame shows.
type Site struct {
	Version  string
	Sessions bool // the sessions view is enabled: link it
}

// UsageData fills the usage page's recipes.
type UsageData struct {
	Site
	Base      string // this server's HTTP base URL: "https://relay.example.com[/prefix]"
	WSBase    string // its WebSocket twin: "wss://relay.example.com[/prefix]"
	User      string // SSH user name (--ssh-user)
	ID        string // the rendezvous ID filled into the recipes
	Downloads bool   // the server embeds the binaries
	// Sums maps the binaries' file names (agent-linux-amd64) to their
	// SHA-256 in hex, as this server serves them; nil without downloads.
	// Recipes check what they download against them.
	Sums map[string]string
}

// Download is one row of the downloads table.
type Download struct {
	Command  string // agent, wsproxy, tcptows
	OS, Arch string
	Name     string // agent-linux-amd64
	URL      string // absolute URL of the file
	ShortURL string // the short URL recipes use, or ""
	Size     int64
	SHA256   string // hex
}

// DownloadsData fills the downloads page.
type DownloadsData struct {
	Site
	Rows     []Download
	Missing  []string // expected files this server lacks
	Terminal []Asset  // the files the browser terminal runs
}

// Asset is one file the browser terminal runs, with the size and SHA-256
// of what the browser runs (the wasm decompressed).
type Asset struct {
	Path   string // URL path: /static/term/webterm.wasm
	Size   int64
	SHA256 string // hex
}

// TerminalAssets are the URLs, with their content's version, of what the
// terminal page loads. Wasm is "" when the server was built without the
// terminal.
type TerminalAssets struct {
	XtermCSS, XtermJS, FitJS string
	WasmExec, Script, Style  string
	Files, Keys              string // the page's parts: files.js, keys.js
	Worker                   string // sw.js, the service worker that streams downloads
	Wasm                     string
}

// TerminalData fills the browser terminal page.
type TerminalData struct {
	Site
	ID     string
	User   string // SSH user name (--ssh-user)
	Base   string // this server's HTTP base URL
	Client string // the WebSocket URL of /client/ID
	Assets TerminalAssets
	// Verified is what the relay checked about the agent's job when the
	// page was made (see Session.Verified); "" for none.
	Verified string
}

// Session is one connected agent on the sessions page. Everything but
// ID, Remote, Since and Verified is what the agent says about itself.
type Session struct {
	ID string
	// Verified is what the relay checked about the agent's job from a CI
	// system's identity token ("github.com/acme/app, ..., by alice"), ""
	// when it checked none.
	Verified    string
	Remote      string
	Hostname    string
	OS, Arch    string
	User        string
	Dir         string
	CI          []Hint
	Fingerprint string
	Since       time.Time
	Expiry      time.Time // zero: none reported
	Users       int       // SSH sessions the agent reports
	Streams     int       // client connections relayed now
}

// Hint is one CI variable an agent reported.
type Hint struct{ Key, Value string }

// SessionsData fills the sessions page.
type SessionsData struct {
	Site
	Sessions []Session
	Events   string // URL of the event stream, with the server's path prefix
}

// wide reports whether a page uses the full width of the window.
func wide(active string) bool { return active == "sessions" || active == "terminal" }

func stamp(t time.Time) string {
	if t.IsZero() {
		return "—"
	}
	return t.UTC().Format("2006-01-02 15:04:05 UTC")
}

// size is a byte count for people: "12.3 MiB".
func size(n int64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := int64(unit), 0
	for m := n / unit; m >= unit; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTPE"[exp])
}

func platform(goos, arch string) string {
	names := map[string]string{"linux": "Linux", "darwin": "macOS", "windows": "Windows"}
	n := names[goos]
	if n == "" {
		n = goos
	}
	return n + " " + arch
}

func joinNames(names []string) string {
	out := ""
	for i, n := range names {
		if i > 0 {
			out += ", "
		}
		out += n
	}
	return out
}
