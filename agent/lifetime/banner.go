package lifetime

import (
	"fmt"
	"runtime"
	"strings"
	"time"
)

// What users read about the lifetime: the banner at login, the warnings
// before the deadline. Commands are shown for the agent's OS.

// holdCommands are the shell commands that extend, lengthen and release
// the hold on this OS.
type holdCommands struct{ touch, longer, release string }

func holdCommandsFor(goos string) holdCommands {
	if goos == "windows" {
		return holdCommands{
			touch:   `New-Item -Force "$env:agentdir\.hold"` + "   (cmd: type nul > \"%agentdir%\\.hold\")",
			longer:  `(New-Item -Force "$env:agentdir\.hold").LastWriteTime = (Get-Date).AddHours(2)`,
			release: `Remove-Item "$env:agentdir\.hold"` + "   (cmd: del \"%agentdir%\\.hold\")",
		}
	}
	return holdCommands{
		touch:   `touch "$agentdir/.hold"`,
		longer:  `touch -d '+2 hours' "$agentdir/.hold"`,
		release: `rm "$agentdir/.hold"`,
	}
}

// clock formats an instant for users: UTC wall time, and how far away.
func clock(t, now time.Time) string {
	return fmt.Sprintf("%s UTC, in %s", t.UTC().Format("15:04:05"), human(t.Sub(now)))
}

// human rounds a duration for reading.
func human(d time.Duration) string {
	switch {
	case d >= 10*time.Second:
		return d.Round(time.Second).String()
	case d > 0:
		return d.Round(100 * time.Millisecond).String()
	}
	return "0s"
}

// bannerLocked is the text shown in an interactive session at login.
func (l *Lifetime) bannerLocked(now time.Time) string {
	return banner(&l.st, now, runtime.GOOS)
}

func banner(s *lifeState, now time.Time, goos string) string {
	c := s.cfg
	cmds := holdCommandsFor(goos)
	var b strings.Builder
	fmt.Fprintf(&b, "[converge] This CI job stays up while you use it, within limits:\n")
	if c.Expiry > 0 {
		fmt.Fprintf(&b, "  - Idle expiry: %s after your last input (as of now %s);", human(c.Expiry), clock(s.deadline(), now))
		if wb := c.warnBefore(); wb > 0 {
			fmt.Fprintf(&b, " warnings from %s before.\n", human(wb))
		} else {
			b.WriteString("\n")
		}
		fmt.Fprintf(&b, "  - Extend: type anything, or  %s  (holds until its mtime + %s)\n", cmds.touch, human(c.Expiry))
		fmt.Fprintf(&b, "    Longer:  %s      Release:  %s\n", cmds.longer, cmds.release)
	} else {
		fmt.Fprintf(&b, "  - No idle expiry. A .hold file still keeps the agent up: %s\n", cmds.longer)
	}
	if h := s.heldUntil(); h.After(now) {
		fmt.Fprintf(&b, "  - Held by .hold until %s.\n", clock(h, now))
	}
	if c.ExitOnLastLogout {
		b.WriteString("  - When the last user logs out (and .hold does not hold), the agent exits and the job goes on;\n" +
			"    a shell left running (cut off, detached) keeps it up until the idle expiry, no longer.\n")
	} else {
		b.WriteString("  - The agent keeps running after you log out, until the expiry.\n")
	}
	if cp := s.hardCap(); !cp.IsZero() {
		fmt.Fprintf(&b, "  - Hard limit: %s (--max-session %s), whatever the input or .hold.\n", clock(cp, now), human(c.MaxSession))
	}
	return b.String()
}

// warningLocked is the warning shown in open shells with left to go.
func (l *Lifetime) warningLocked(now time.Time, left time.Duration) string {
	return warning(&l.st, now, left, runtime.GOOS)
}

func warning(s *lifeState, now time.Time, left time.Duration, goos string) string {
	at := now.Add(left)
	if s.capped() {
		return fmt.Sprintf("[converge] This session ends in %s (at %s UTC): the --max-session limit of %s. Save your work.\n",
			human(left), at.UTC().Format("15:04:05"), human(s.cfg.MaxSession))
	}
	return fmt.Sprintf("[converge] This session expires in %s (at %s UTC) for lack of input.\n"+
		"  Type anything to extend it by %s, or run: %s\n",
		human(left), at.UTC().Format("15:04:05"), human(s.cfg.Expiry), holdCommandsFor(goos).touch)
}
