package cli

import "log/slog"

// CheckFileLimit raises the file descriptor limit (RaiseFileLimit) and
// logs it. need is how many descriptors the command may hold at its
// configured caps (0: unknown, for example with a cap turned off); when
// the limit is lower, it warns, saying what to set. It never fails: a
// server below its caps still serves until it runs out.
func CheckFileLimit(log *slog.Logger, need int) {
	limit, err := RaiseFileLimit()
	if err != nil {
		log.Warn("cannot raise the file descriptor limit", "limit", limit, "error", err)
	}
	switch {
	case limit == 0:
	case need > 0 && limit < uint64(need):
		log.Warn("the file descriptor limit is below what the configured caps may use; raise it (systemd LimitNOFILE=, ulimit -n) or lower the caps",
			"limit", limit, "needed", need)
	default:
		log.Info("file descriptor limit", "limit", limit, "needed", need)
	}
}
