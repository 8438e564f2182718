package bench

import (
	"fmt"
	"io"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"text/tabwriter"
	"time"
)

// table is the benchmark's result: sections of rows comparing two
// columns, printed aligned, with notes on method.
type table struct {
	header   []string
	sections []*section
	notes    []string
}

type section struct {
	title      string
	a, b, comp string // column headings: two measured columns and their comparison
	rows       []row
}

type row struct {
	what    string
	a, b    string
	comp    string
	target  string
	verdict string // "ok", "MISS" or ""
}

func (t *table) add(title, a, b, comp string) *section {
	s := &section{title: title, a: a, b: b, comp: comp}
	t.sections = append(t.sections, s)
	return s
}

func (s *section) add(r row) { s.rows = append(s.rows, r) }

// write prints the table aligned.
func (t *table) write(w io.Writer) {
	for _, h := range t.header {
		fmt.Fprintln(w, h)
	}
	for _, s := range t.sections {
		fmt.Fprintf(w, "\n%s\n", s.title)
		tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
		fmt.Fprintf(tw, "  %s\t%s\t%s\t%s\t%s\t%s\t\n", "measurement", s.a, s.b, s.comp, "target", "")
		for _, r := range s.rows {
			fmt.Fprintf(tw, "  %s\t%s\t%s\t%s\t%s\t%s\t\n", r.what, r.a, r.b, r.comp, r.target, r.verdict)
		}
		tw.Flush()
	}
	if len(t.notes) > 0 {
		fmt.Fprintln(w, "\nNotes:")
		for _, n := range t.notes {
			fmt.Fprintf(w, "- %s\n", n)
		}
	}
}

func (t *table) String() string {
	var b strings.Builder
	t.write(&b)
	return b.String()
}

// machine describes where the numbers come from.
func machine() []string {
	cpu := "unknown CPU"
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for line := range strings.Lines(string(b)) {
			if v, ok := strings.CutPrefix(line, "model name"); ok {
				cpu = strings.TrimSpace(strings.TrimPrefix(strings.TrimSpace(v), ":"))
				break
			}
		}
	}
	sshv := "OpenSSH ?"
	if out, err := exec.Command("ssh", "-V").CombinedOutput(); err == nil {
		sshv = strings.TrimSpace(string(out))
	}
	return []string{
		fmt.Sprintf("Converge benchmark, %s", time.Now().UTC().Format("2006-01-02 15:04 MST")),
		fmt.Sprintf("%s/%s, %d CPUs (%s), %s, %s, load %s", runtime.GOOS, runtime.GOARCH, runtime.NumCPU(), cpu, runtime.Version(), sshv, loadavg()),
	}
}

func loadavg() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "?"
	}
	f := strings.Fields(string(b))
	if len(f) < 3 {
		return "?"
	}
	return strings.Join(f[:3], " ")
}

func mibps(size int64, d time.Duration) string {
	return fmt.Sprintf("%.1f MiB/s", float64(size)/(1<<20)/d.Seconds())
}

func ms(d time.Duration) string {
	return fmt.Sprintf("%.3f ms", float64(d)/float64(time.Millisecond))
}

// diff is a signed difference in milliseconds ("+0.211 ms", "-6.5 ms").
func diff(d time.Duration) string {
	return fmt.Sprintf("%+.3f ms", float64(d)/float64(time.Millisecond))
}

// ratio is a/b for durations measured for the same work: b's time over a's.
func speedRatio(a, b time.Duration) float64 { return float64(b) / float64(a) }

func verdict(ok bool) string {
	if ok {
		return "ok"
	}
	return "MISS"
}

// msLabel names a round trip in whole milliseconds ("0 ms", "50 ms").
func msLabel(d time.Duration) string { return fmt.Sprintf("%d ms", d.Milliseconds()) }
