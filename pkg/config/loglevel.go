package config

import "strings"

// LogLevel is the syslog level logged packets are reported at: the
// kernel LOG target's --log-level. The empty LogLevel is off.
type LogLevel string

// The syslog levels, most severe first, and off.
const (
	LogOff     LogLevel = ""
	LogEmerg   LogLevel = "emerg"
	LogAlert   LogLevel = "alert"
	LogCrit    LogLevel = "crit"
	LogErr     LogLevel = "err"
	LogWarning LogLevel = "warning"
	LogNotice  LogLevel = "notice"
	LogInfo    LogLevel = "info"
	LogDebug   LogLevel = "debug"
)

// DefaultLogLevel is the level of log = true: warning, the LOG target's
// own default, so that configurations written before levels existed log
// exactly as they did.
const DefaultLogLevel = LogWarning

// logLevels lists the level names a log setting takes.
var logLevels = []LogLevel{LogEmerg, LogAlert, LogCrit, LogErr, LogWarning, LogNotice, LogInfo, LogDebug}

// logLevelHelp words what a log setting takes, for messages. Proxmox
// writes "nolog" for off, which an import turns into false.
const logLevelHelp = "use true (level warning), false (off) or a syslog level: emerg, alert, crit, err, warning, notice, info or debug"

// ParseLogLevel reads a log setting as written in TOML or JSON: true
// (DefaultLogLevel), false (LogOff) or a level name in any case. ok is
// false for any other value.
func ParseLogLevel(v any) (level LogLevel, ok bool) {
	switch v := v.(type) {
	case bool:
		if v {
			return DefaultLogLevel, true
		}
		return LogOff, true
	case string:
		for _, l := range logLevels {
			if strings.EqualFold(v, string(l)) {
				return l, true
			}
		}
	}
	return LogOff, false
}
