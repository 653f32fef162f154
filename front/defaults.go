package front

import (
	"log/slog"
	"time"
)

// Or is v when it is set (above zero), else def: how every front reads a
// limit or timeout its configuration left zero.
func Or[T ~int | ~int32 | ~int64](v, def T) T {
	if v > 0 {
		return v
	}
	return def
}

// IdleOr is an idle timeout's rule: v when above zero, none (0) when
// negative, def when zero.
func IdleOr(v, def time.Duration) time.Duration {
	switch {
	case v > 0:
		return v
	case v < 0:
		return 0
	}
	return def
}

// LoggerOr is l, or slog.Default() for nil.
func LoggerOr(l *slog.Logger) *slog.Logger {
	if l != nil {
		return l
	}
	return slog.Default()
}
