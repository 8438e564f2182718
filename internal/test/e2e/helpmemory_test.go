package e2e

import (
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

// TestHelpMemoryMatchesDocs: the memory a server flag's --help says each
// agent, stream or idle pooled stream costs is the figure the operations
// guide's flag table gives (measured in docs/benchmarks.md), so a
// capacity plan does not depend on which of the two an operator read.
func TestHelpMemoryMatchesDocs(t *testing.T) {
	t.Parallel()
	help, err := exec.Command(bin("converge"), "--help").CombinedOutput()
	if err != nil {
		t.Fatalf("converge --help: %v\n%s", err, help)
	}
	ops, err := os.ReadFile(filepath.Join("..", "..", "..", "docs", "operations.md"))
	if err != nil {
		t.Fatal(err)
	}
	kb := regexp.MustCompile(`(\d+) KB`)
	for _, flag := range []string{"max-agents", "max-streams", "stream-pool"} {
		usage := flagUsage(string(help), flag)
		row := tableRow(string(ops), flag)
		h := kb.FindStringSubmatch(usage)
		d := regexp.MustCompile(`(\d+)(?:–\d+)? KB`).FindStringSubmatch(row)
		if h == nil || d == nil {
			t.Errorf("--%s: no KB figure in --help (%q) or docs/operations.md (%q)", flag, usage, row)
			continue
		}
		if h[1] != d[1] {
			t.Errorf("--%s: --help says %s KB, docs/operations.md %s KB", flag, h[1], d[1])
		}
	}
}

// flagUsage is the usage text --help prints under --flag.
func flagUsage(help, flag string) string {
	_, after, ok := strings.Cut(help, "\n  --"+flag+" ")
	if !ok {
		return ""
	}
	usage, _, _ := strings.Cut(after, "\n  --")
	return usage
}

// tableRow is the line of a Markdown table whose first cell is `--flag`.
func tableRow(doc, flag string) string {
	for line := range strings.Lines(doc) {
		if strings.HasPrefix(line, "| `--"+flag+"` |") {
			return line
		}
	}
	return ""
}
