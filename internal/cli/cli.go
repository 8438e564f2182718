// Package cli is the common shape of Converge's commands: flags with
// CONVERGE_* environment twins, --help that shows both, --version, and the
// slog handler. It holds no product logic.
package cli

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"
)

// Version is set at build time with -ldflags "-X .../internal/cli.Version=...".
var Version = "dev"

// Command describes a command for its --help.
type Command struct {
	Name    string // "agent"
	Usage   string // "agent [flags] ws[s]://host[:port]"
	Summary string // a paragraph on what it does
	Footer  string // examples and notes, after the flags
	Flags   *flag.FlagSet
	// VersionDetail, when set, adds lines after the version that
	// --version prints (the server's sums of what browsers run).
	VersionDetail func() string
	// Env names the environment twin of a flag whose twin is not
	// EnvName's (flag name -> variable), so that a variable has one
	// meaning. Nil: every flag's twin is EnvName's.
	Env map[string]string
}

// New returns a Command with an empty flag set that already knows
// --version.
func New(name, usage, summary string) *Command {
	c := &Command{Name: name, Usage: usage, Summary: summary, Flags: flag.NewFlagSet(name, flag.ContinueOnError)}
	c.Flags.Bool("version", false, "print the version and exit")
	c.Flags.Usage = func() { c.PrintHelp(c.Flags.Output()) }
	return c
}

// EnvName is the environment twin of a flag: CONVERGE_ and the flag name in
// upper case with '-' as '_'.
func EnvName(flagName string) string {
	return "CONVERGE_" + strings.ToUpper(strings.ReplaceAll(flagName, "-", "_"))
}

// envName is the environment twin of flag name.
func (c *Command) envName(name string) string {
	if v, ok := c.Env[name]; ok {
		return v
	}
	return EnvName(name)
}

// ErrExit means the command printed what was asked (--help, --version) and
// should exit 0.
var ErrExit = errors.New("exit")

// Parse parses args. A flag not given on the command line takes its
// environment twin when that is set. --help and --version print and return
// ErrExit.
func (c *Command) Parse(args []string) error {
	if err := c.Flags.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return ErrExit
		}
		return err
	}
	if c.Flags.Lookup("version").Value.String() == "true" {
		fmt.Fprintf(c.Flags.Output(), "%s %s\n", c.Name, Version)
		if c.VersionDetail != nil {
			fmt.Fprint(c.Flags.Output(), c.VersionDetail())
		}
		return ErrExit
	}
	set := map[string]bool{}
	c.Flags.Visit(func(f *flag.Flag) { set[f.Name] = true })
	var err error
	c.Flags.VisitAll(func(f *flag.Flag) {
		if set[f.Name] || f.Name == "version" || err != nil {
			return
		}
		if v, ok := os.LookupEnv(c.envName(f.Name)); ok {
			if e := f.Value.Set(v); e != nil {
				err = fmt.Errorf("environment %s=%q: %v", c.envName(f.Name), v, e)
			}
		}
	})
	return err
}

// PrintHelp writes the usage, summary, flags with their environment twins
// and defaults, and the footer.
func (c *Command) PrintHelp(w io.Writer) {
	fmt.Fprintf(w, "Usage: %s\n\n%s\n\nFlags:\n", c.Usage, strings.TrimSpace(c.Summary))
	c.Flags.VisitAll(func(f *flag.Flag) {
		name, usage := flag.UnquoteUsage(f)
		line := "  --" + f.Name
		if name != "" {
			line += " " + name
		}
		fmt.Fprintln(w, line)
		fmt.Fprintf(w, "        %s\n", usage)
		if f.Name != "version" {
			extra := "env " + c.envName(f.Name)
			if f.DefValue != "" && f.DefValue != "false" && f.DefValue != "[]" {
				extra = "default " + f.DefValue + "; " + extra
			}
			fmt.Fprintf(w, "        (%s)\n", extra)
		}
	})
	if c.Footer != "" {
		fmt.Fprintf(w, "\n%s\n", strings.TrimSpace(c.Footer))
	}
}

// Logger returns a slog.Logger writing to w: text by default, JSON when
// format is "json". Debug level when verbose.
func Logger(w io.Writer, format string, verbose bool) (*slog.Logger, error) {
	opts := &slog.HandlerOptions{Level: slog.LevelInfo}
	if verbose {
		opts.Level = slog.LevelDebug
	}
	switch format {
	case "", "text":
		return slog.New(slog.NewTextHandler(w, opts)), nil
	case "json":
		return slog.New(slog.NewJSONHandler(w, opts)), nil
	}
	return nil, fmt.Errorf("log format %q: use text or json", format)
}

// Fatal prints "name: err" to stderr and exits with code.
func Fatal(name string, err error, code int) {
	fmt.Fprintf(os.Stderr, "%s: %v\n", name, err)
	os.Exit(code)
}

// StringList is a repeatable string flag. From the environment it takes a
// comma-separated list.
type StringList []string

func (l *StringList) String() string { return strings.Join(*l, ",") }
func (l *StringList) Set(v string) error {
	for _, p := range strings.Split(v, ",") {
		if p = strings.TrimSpace(p); p != "" {
			*l = append(*l, p)
		}
	}
	return nil
}
