package journal

import (
	"context"
	"log/slog"
)

// logLine writes e as one line of the job's log: the message says what
// happened, the attributes who and with what. Kinds it does not know are
// logged by name, with their Note.
func logLine(log *slog.Logger, e Entry) {
	msg, level := string(e.Kind), slog.LevelInfo
	switch e.Kind {
	case KindStart:
		msg = "journal started"
	case KindLogin:
		msg = "login accepted"
	case KindRefused:
		msg, level = "login refused", slog.LevelWarn
	case KindSessionStart:
		msg = "session started"
	case KindSessionEnd:
		msg = "session ended"
	case KindLogout:
		msg = "logged out"
	}
	var attrs []slog.Attr
	if e.Conn != "" {
		attrs = append(attrs, slog.String("conn", e.Conn))
	}
	attrs = append(attrs, loginAttrs(e.Login)...)
	attrs = append(attrs, sessionAttrs(e.Session)...)
	if e.Note != "" {
		attrs = append(attrs, slog.String("note", e.Note))
	}
	if len(e.Data) > 0 {
		attrs = append(attrs, slog.String("data", string(e.Data)))
	}
	log.LogAttrs(context.Background(), level, msg, attrs...)
}

func loginAttrs(l *Login) []slog.Attr {
	if l == nil {
		return nil
	}
	a := []slog.Attr{slog.String("user", l.User), slog.String("method", l.Method)}
	add := func(k, v string) {
		if v != "" {
			a = append(a, slog.String(k, v))
		}
	}
	add("key_type", l.KeyType)
	add("fingerprint", l.Fingerprint)
	add("comment", l.Comment)
	add("source", l.Source)
	add("cert_key_id", l.CertKeyID)
	if l.CertKeyID != "" || l.CertSerial != 0 {
		a = append(a, slog.Uint64("cert_serial", l.CertSerial))
	}
	add("principal", l.Principal)
	add("ca", l.CA)
	add("way", l.Way)
	return a
}

func sessionAttrs(s *Session) []slog.Attr {
	if s == nil {
		return nil
	}
	a := []slog.Attr{slog.String("session", s.ID), slog.String("kind", s.Kind)}
	if s.Command != "" {
		a = append(a, slog.String("command", s.Command))
	}
	if s.Target != "" {
		a = append(a, slog.String("target", s.Target))
	}
	if s.PTY {
		a = append(a, slog.Bool("pty", true))
	}
	if s.Exit != nil {
		a = append(a, slog.Int("exit", *s.Exit), slog.Int64("bytes_in", s.BytesIn), slog.Int64("bytes_out", s.BytesOut))
	}
	return a
}
