package e2e

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"
)

// The documentation checks: the README and docs/*.md are read as a user
// reads them, so a moved page, a renamed heading or a changed default
// shows up in `make test` rather than in a user's browser.

// repoRoot is the checkout, seen from this package's directory.
const repoRoot = "../../.."

// docFiles lists the README and every page under docs/, relative to the
// checkout.
func docFiles(t *testing.T) []string {
	t.Helper()
	pages, err := filepath.Glob(filepath.Join(repoRoot, "docs", "*.md"))
	if err != nil || len(pages) == 0 {
		t.Fatalf("no pages under docs/ (%v)", err)
	}
	files := []string{"README.md"}
	for _, p := range pages {
		rel, _ := filepath.Rel(repoRoot, p)
		files = append(files, rel)
	}
	return files
}

// line is a line of a markdown file, numbered from 1.
type line struct {
	n    int
	text string
}

// prose returns the lines of a markdown file outside fenced code blocks,
// in order, with inline code spans blanked out unless keepCode.
func prose(text string, keepCode bool) []line {
	var lines []line
	fenced := false
	span := regexp.MustCompile("`[^`]*`")
	for i, l := range strings.Split(text, "\n") {
		if strings.HasPrefix(strings.TrimSpace(l), "```") {
			fenced = !fenced
			continue
		}
		if fenced {
			continue
		}
		if !keepCode {
			l = span.ReplaceAllString(l, "``")
		}
		lines = append(lines, line{i + 1, l})
	}
	return lines
}

// anchors returns the anchors GitHub makes for a markdown file's headings:
// lower case, punctuation dropped, spaces as hyphens, repeats numbered.
func anchors(text string) map[string]bool {
	out := map[string]bool{}
	seen := map[string]int{}
	drop := regexp.MustCompile(`[^\p{L}\p{N} _-]`)
	for _, pl := range prose(text, true) {
		l := pl.text
		if !strings.HasPrefix(l, "#") {
			continue
		}
		h := strings.TrimSpace(strings.TrimLeft(l, "#"))
		slug := strings.ReplaceAll(drop.ReplaceAllString(strings.ToLower(h), ""), " ", "-")
		if n := seen[slug]; n > 0 {
			out[fmt.Sprintf("%s-%d", slug, n)] = true
		} else {
			out[slug] = true
		}
		seen[slug]++
	}
	return out
}

// TestDocLinksResolve checks that every relative link in the README and
// docs/*.md names a file that exists, and that every #anchor names a
// heading of the page it points into.
func TestDocLinksResolve(t *testing.T) {
	t.Parallel()
	link := regexp.MustCompile(`\]\(([^)\s]+)\)`)
	checked := 0
	for _, file := range docFiles(t) {
		text, err := os.ReadFile(filepath.Join(repoRoot, file))
		if err != nil {
			t.Fatal(err)
		}
		for _, pl := range prose(string(text), false) {
			n := pl.n
			for _, m := range link.FindAllStringSubmatch(pl.text, -1) {
				target := m[1]
				if regexp.MustCompile(`^[a-z]+:`).MatchString(target) {
					continue // https:, mailto: and the like: not ours to check
				}
				checked++
				path, anchor, _ := strings.Cut(target, "#")
				dest := file
				if path != "" {
					dest = filepath.Join(filepath.Dir(file), path)
					if _, err := os.Stat(filepath.Join(repoRoot, dest)); err != nil {
						t.Errorf("%s:%d: link %q: no such file %s", file, n, target, dest)
						continue
					}
				}
				if anchor == "" {
					continue
				}
				page, err := os.ReadFile(filepath.Join(repoRoot, dest))
				if err != nil || !strings.HasSuffix(dest, ".md") {
					t.Errorf("%s:%d: link %q: #%s points into %s, which is not a markdown page", file, n, target, anchor, dest)
					continue
				}
				if !anchors(string(page))[anchor] {
					t.Errorf("%s:%d: link %q: %s has no heading with anchor #%s", file, n, target, dest, anchor)
				}
			}
		}
	}
	if checked < 20 {
		t.Errorf("checked only %d relative links: is the link pattern still right?", checked)
	}
}

// helpDefaults runs a built command's --help and returns each flag's
// default as printed ("" when it prints none, as for booleans and empty
// strings).
func helpDefaults(t *testing.T, name string) map[string]string {
	t.Helper()
	out, err := exec.Command(bin(name), "--help").CombinedOutput()
	if err != nil {
		t.Fatalf("%s --help: %v\n%s", name, err, out)
	}
	flags := map[string]string{}
	flag := regexp.MustCompile(`^  --([a-z0-9-]+)`)
	def := regexp.MustCompile(`^\s+\(default ([^;)]*)[;)]`)
	current := ""
	for _, l := range strings.Split(string(out), "\n") {
		if m := flag.FindStringSubmatch(l); m != nil {
			current = m[1]
			flags[current] = ""
			continue
		}
		if m := def.FindStringSubmatch(l); m != nil && current != "" {
			flags[current] = m[1]
		}
	}
	if len(flags) < 3 {
		t.Fatalf("%s --help: found only %d flags; has its format changed?\n%s", name, len(flags), out)
	}
	return flags
}

// docDefault is one place where the documentation states a flag's default.
type docDefault struct {
	where   string   // file:line
	command string   // the command named beside it, or "" for any that has the flag
	flags   []string // without dashes
	value   string   // as written, without backquotes
}

// docDefaults collects the defaults the README and docs state: rows of
// tables with a Flag and a Default column (and maybe a Command column),
// and prose written as "`--flag` (`value`".
func docDefaults(t *testing.T) []docDefault {
	t.Helper()
	flagRE := regexp.MustCompile("`--([a-z0-9-]+)")
	first := regexp.MustCompile("`([^`]*)`")
	inProse := regexp.MustCompile("`--([a-z0-9-]+)` \\(`([^`]+)`")
	var found []docDefault
	for _, file := range docFiles(t) {
		text, err := os.ReadFile(filepath.Join(repoRoot, file))
		if err != nil {
			t.Fatal(err)
		}
		inTable, flagCol, defCol, cmdCol := false, -1, -1, -1
		prev := 0
		for _, pl := range prose(string(text), true) {
			n, l := pl.n, pl.text
			if !strings.HasPrefix(l, "|") || pl.n != prev+1 {
				inTable = false
			}
			prev = pl.n
			if !strings.HasPrefix(l, "|") {
				for _, m := range inProse.FindAllStringSubmatch(l, -1) {
					if strings.HasPrefix(m[2], "CONVERGE_") {
						continue // the flag's environment twin, not a value
					}
					found = append(found, docDefault{where: fmt.Sprintf("%s:%d", file, n), flags: []string{m[1]}, value: m[2]})
				}
				continue
			}
			cells := strings.Split(strings.Trim(l, "|"), "|")
			if !inTable { // a table's header
				inTable, flagCol, defCol, cmdCol = true, -1, -1, -1
				for i, c := range cells {
					switch strings.ToLower(strings.TrimSpace(c)) {
					case "flag":
						flagCol = i
					case "default":
						defCol = i
					case "command":
						cmdCol = i
					}
				}
				continue
			}
			if flagCol < 0 || defCol < 0 || strings.HasPrefix(l, "|---") || len(cells) <= defCol || len(cells) <= flagCol {
				continue
			}
			d := docDefault{where: fmt.Sprintf("%s:%d", file, n), value: strings.TrimSpace(cells[defCol])}
			if m := first.FindStringSubmatch(d.value); m != nil {
				d.value = m[1]
			}
			for _, m := range flagRE.FindAllStringSubmatch(cells[flagCol], -1) {
				d.flags = append(d.flags, m[1])
			}
			if cmdCol >= 0 && len(cells) > cmdCol {
				d.command = strings.TrimSpace(cells[cmdCol])
			}
			found = append(found, d)
		}
	}
	return found
}

// sameDefault reports whether a documented default matches a printed
// one: "off" and "none" match a zero or absent default, durations compare
// as durations (5m is 5m0s), anything else as text.
func sameDefault(doc, help string) bool {
	word := strings.ToLower(strings.Fields(doc + " x")[0])
	if word == "off" || word == "none" {
		return help == "" || help == "0" || help == "0s" || help == "false"
	}
	if dd, err := time.ParseDuration(doc); err == nil {
		if hd, err := time.ParseDuration(help); err == nil {
			return dd == hd
		}
		if doc == "0" {
			return help == "0"
		}
	}
	return doc == help
}

// knownWrong lists defaults the docs state rightly but a command's --help
// prints wrongly, with the issue that fixes the command. An entry that
// starts to match fails the test, so that it is removed.
var knownWrong = map[string]string{}

// TestDocDefaultsMatchHelp checks every default the README and docs state
// for a flag against what the built command's --help prints, so the two
// cannot drift apart. Defaults that depend on the machine ($XDG_..., ~)
// are not compared.
func TestDocDefaultsMatchHelp(t *testing.T) {
	t.Parallel()
	commands := map[string]map[string]string{}
	for _, c := range []string{"converge", "agent", "wsproxy", "tcptows"} {
		commands[c] = helpDefaults(t, c)
	}
	checked := 0
	for _, d := range docDefaults(t) {
		if len(d.flags) == 0 {
			t.Errorf("%s: a row of a flag table names no `--flag`", d.where)
			continue
		}
		if strings.ContainsAny(d.value, "$~") {
			continue
		}
		for _, f := range d.flags {
			owners := 0
			for name, defaults := range commands {
				if d.command != "" && !strings.Contains(d.command, name) {
					continue
				}
				help, ok := defaults[f]
				if !ok {
					continue
				}
				owners++
				checked++
				key := name + " --" + f
				match := sameDefault(d.value, help)
				switch why, known := knownWrong[key]; {
				case known && match:
					t.Errorf("%s: %s now prints default %q as documented: remove it from knownWrong", d.where, key, help)
				case known:
					t.Logf("%s: %s prints default %q, the docs say %q: known, %s", d.where, key, help, d.value, why)
				case !match:
					t.Errorf("%s: the docs say %s defaults to %q; %s --help prints %q", d.where, key, d.value, name, helpOrNone(help))
				}
			}
			if owners == 0 {
				t.Errorf("%s: the docs give a default for --%s, which no command (%q) has", d.where, f, d.command)
			}
		}
	}
	t.Logf("checked %d documented defaults", checked)
	if checked < 25 {
		t.Errorf("checked only %d documented defaults: are the tables still found?", checked)
	}
}

func helpOrNone(s string) string {
	if s == "" {
		return "(none)"
	}
	return s
}

// notMetrics are converge_ names in the docs that are not metrics.
var notMetrics = map[string]bool{
	"converge_host_key": true, // the README's host key file
}

// metricNames returns the names of the metrics the server's source
// registers (Name: "converge_..."), which /metrics serves once they have
// a sample; a labelled metric nobody has touched yet is not served.
func metricNames(t *testing.T) map[string]bool {
	t.Helper()
	names := map[string]bool{}
	re := regexp.MustCompile(`Name:\s*"(converge_[a-z_]+)"`)
	err := filepath.WalkDir(filepath.Join(repoRoot, "server"), func(path string, d os.DirEntry, err error) error {
		if err != nil || d.IsDir() || !strings.HasSuffix(path, ".go") || strings.HasSuffix(path, "_test.go") {
			return err
		}
		b, err := os.ReadFile(path)
		for _, m := range re.FindAllStringSubmatch(string(b), -1) {
			names[m[1]] = true
		}
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	return names
}

// TestDocMetricsMatchServer checks that every converge_ metric the README
// and docs name is one the server registers, that the metrics table in
// docs/operations.md lists every one, and, against a running server, that
// what /metrics serves is among them.
func TestDocMetricsMatchServer(t *testing.T) {
	t.Parallel()
	served := metricNames(t)
	if len(served) < 5 {
		t.Fatalf("the server's source registers only %d converge_ metrics: has the Name: pattern changed?", len(served))
	}
	r := startServer(t)
	for _, m := range regexp.MustCompile(`(?m)^# TYPE (converge_[a-z_]+) `).FindAllStringSubmatch(fetch(t, r.HTTP+"/metrics"), -1) {
		if !served[m[1]] {
			t.Errorf("/metrics serves %s, which the source search did not find: fix metricNames", m[1])
		}
	}
	name := regexp.MustCompile("`(converge_[a-z_]+)")
	for _, file := range docFiles(t) {
		text, err := os.ReadFile(filepath.Join(repoRoot, file))
		if err != nil {
			t.Fatal(err)
		}
		for _, pl := range prose(string(text), true) {
			for _, m := range name.FindAllStringSubmatch(pl.text, -1) {
				n := m[1]
				for _, suffix := range []string{"_bucket", "_sum", "_count"} {
					if base := strings.TrimSuffix(n, suffix); base != n && served[base] {
						n = base
					}
				}
				if !served[n] && !notMetrics[n] {
					t.Errorf("%s:%d: the docs name metric %s, which the server does not register", file, pl.n, m[1])
				}
			}
		}
	}
	table, err := os.ReadFile(filepath.Join(repoRoot, "docs", "operations.md"))
	if err != nil {
		t.Fatal(err)
	}
	for n := range served {
		if !strings.Contains(string(table), "| `"+n) {
			t.Errorf("/metrics serves %s, which the metrics table in docs/operations.md does not list", n)
		}
	}
}

// TestDocAgentIDsUnique checks the IDs that the README's and docs' command
// blocks give agents: each must differ per run ($RANDOM, /dev/urandom) or per job and
// retry ($CI_JOB_ID). A literal ID, or one shared by a run's attempts and
// matrix jobs ($GITHUB_RUN_ID alone), meets the previous run's host key in
// users' known_hosts ("REMOTE HOST IDENTIFICATION HAS CHANGED"), or an
// agent that still holds it.
func TestDocAgentIDsUnique(t *testing.T) {
	t.Parallel()
	id := regexp.MustCompile(`--id[ =]("[^"]*"|\S+)`)
	fence := regexp.MustCompile("(?s)```[a-z]*\n(.*?)```")
	checked := 0
	for _, file := range docFiles(t) {
		text, err := os.ReadFile(filepath.Join(repoRoot, file))
		if err != nil {
			t.Fatal(err)
		}
		for _, block := range fence.FindAllStringSubmatch(string(text), -1) {
			for _, m := range id.FindAllStringSubmatch(block[1], -1) {
				checked++
				v := m[1]
				unique := strings.Contains(v, "$RANDOM") || strings.Contains(v, "$CI_JOB_ID") || strings.Contains(v, "/dev/urandom")
				if !unique || (strings.Contains(v, "$GITHUB_RUN_ID") && !strings.Contains(v, "$GITHUB_RUN_ATTEMPT")) {
					t.Errorf("%s: a command block starts an agent with --id %s: use an ID unique to the run and attempt (with $RANDOM, or $CI_JOB_ID), or none", file, v)
				}
			}
		}
	}
	if checked < 3 {
		t.Errorf("found only %d --id in command blocks: is the pattern still right?", checked)
	}
}

// TestDocGoVersion checks that the README's prerequisites name the Go
// release that go.mod asks for.
func TestDocGoVersion(t *testing.T) {
	t.Parallel()
	mod, err := os.ReadFile(filepath.Join(repoRoot, "go.mod"))
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile(`(?m)^go (\S+)$`).FindStringSubmatch(string(mod))
	if m == nil {
		t.Fatal("go.mod has no go line")
	}
	if want := "Go " + m[1] + " or later"; !strings.Contains(readmeSection(t, "Before you start"), want) {
		t.Errorf("the README's Before you start does not say %q, as go.mod's go line asks", want)
	}
}
