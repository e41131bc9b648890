//! The supervisor's own lines, in logcopy's shapes and without a logging framework (the static binary stays lean):
//!
//! - text: `2026-12-02T05:35:46.123Z  INFO supervisor agent-1: wrote agent-1.start0` (RFC 3339 UTC with
//!   milliseconds, the level right-aligned in five columns, then who speaks and the message);
//! - json: `{"ts":"2026-12-02T05:35:46.123Z","level":"INFO","role":"agent","worker":1,"msg":"wrote ..."}`, one
//!   object per line (role and worker are null before they are known).
//!
//! Every entry is one line: a line break in a message is written as `\n` (text) or escaped by JSON. The child's log
//! file on the volume, which participants read, always gets the text form.

use clap::ValueEnum;
use std::io::Write;
use std::sync::RwLock;
use volume::markers::{Role, WorkerId};

/// How much is logged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, ValueEnum)]
pub enum Level {
    Error,
    Warn,
    Info,
    /// `trace` too: one `LOG_LEVEL` serves every container of the pod, and logcopy has it.
    #[value(alias = "trace")]
    Debug,
}

impl Level {
    fn name(self) -> &'static str {
        match self {
            Level::Error => "ERROR",
            Level::Warn => "WARN",
            Level::Info => "INFO",
            Level::Debug => "DEBUG",
        }
    }
}

/// The shape of a line on stdout and stderr.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// A timestamp, a level, and the message, for people (`human` too: one `LOG_FORMAT` serves every container of
    /// the pod, and logcopy calls it so).
    #[value(alias = "human")]
    Text,
    /// One JSON object per line (ts, level, role, worker, msg), for FluentD and CloudWatch.
    Json,
}

#[derive(Debug, Clone, Copy)]
struct Settings {
    format: Format,
    level: Level,
    who: Option<(Role, WorkerId)>,
}

static SETTINGS: RwLock<Settings> = RwLock::new(Settings { format: Format::Text, level: Level::Info, who: None });

fn settings() -> Settings {
    *SETTINGS.read().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Sets the format and the level (text and info until then).
pub fn init(format: Format, level: Level) {
    let mut s = SETTINGS.write().unwrap_or_else(std::sync::PoisonError::into_inner);
    s.format = format;
    s.level = level;
}

/// Sets who speaks: the role and the worker, once they are known.
pub fn speaker(role: Role, worker: WorkerId) {
    SETTINGS.write().unwrap_or_else(std::sync::PoisonError::into_inner).who = Some((role, worker));
}

/// Whether `level` is logged.
pub fn enabled(level: Level) -> bool {
    level <= settings().level
}

/// One entry (with its line break) in `format`, stamped with the Unix time `unix_ms`.
pub fn render(format: Format, level: Level, who: Option<(Role, WorkerId)>, unix_ms: i64, msg: &str) -> String {
    let ts = volume::time::rfc3339_millis(unix_ms);
    match format {
        Format::Text => {
            let speaker = match who {
                Some((role, worker)) => format!("supervisor {role}-{worker}"),
                None => "supervisor".to_owned(),
            };
            let msg = msg.replace('\\', "\\\\").replace('\n', "\\n").replace('\r', "\\r");
            format!("{ts} {:>5} {speaker}: {msg}\n", level.name())
        }
        Format::Json => {
            let v = serde_json::json!({
                "ts": ts,
                "level": level.name(),
                "role": who.map(|(r, _)| r.to_string()),
                "worker": who.map(|(_, w)| w.0),
                "msg": msg,
            });
            format!("{v}\n")
        }
    }
}

/// The entry of `msg` in the text form, stamped now (what the child's log file gets).
pub fn text_line(level: Level, msg: &str) -> String {
    render(Format::Text, level, settings().who, volume::time::unix_now_millis(), msg)
}

/// Writes an entry to stdout (the supervisor's running commentary, interleaved with its child's output) when its
/// level is enabled; the line written, if any.
pub fn out(level: Level, msg: &str) -> Option<String> {
    write(level, msg, false)
}

/// Writes an entry to stderr (problems before or outside a run) when its level is enabled.
pub fn err(level: Level, msg: &str) {
    write(level, msg, true);
}

fn write(level: Level, msg: &str, stderr: bool) -> Option<String> {
    if !enabled(level) {
        return None;
    }
    let s = settings();
    let line = render(s.format, level, s.who, volume::time::unix_now_millis(), msg);
    if stderr {
        let _ = std::io::stderr().lock().write_all(line.as_bytes());
    } else {
        let mut out = std::io::stdout().lock();
        let _ = out.write_all(line.as_bytes());
        let _ = out.flush();
    }
    Some(line)
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: i64 = 1_710_925_321_007;

    #[test]
    fn text_lines_have_a_stamp_a_level_and_one_line() {
        let who = Some((Role::Agent, WorkerId(1)));
        assert_eq!(
            render(Format::Text, Level::Info, who, T, "wrote agent-1.start0"),
            "2024-03-20T09:02:01.007Z  INFO supervisor agent-1: wrote agent-1.start0\n"
        );
        assert_eq!(
            render(Format::Text, Level::Error, None, T, "bad\npath\\x"),
            "2024-03-20T09:02:01.007Z ERROR supervisor: bad\\npath\\\\x\n"
        );
    }

    #[test]
    fn json_lines_are_one_object_each() {
        let line = render(Format::Json, Level::Warn, Some((Role::Simulator, WorkerId(3))), T, "a\nb");
        assert_eq!(line.matches('\n').count(), 1);
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["ts"], "2024-03-20T09:02:01.007Z");
        assert_eq!(v["level"], "WARN");
        assert_eq!(v["role"], "simulator");
        assert_eq!(v["worker"], 3);
        assert_eq!(v["msg"], "a\nb");
        let v: serde_json::Value = serde_json::from_str(&render(Format::Json, Level::Debug, None, T, "x")).unwrap();
        assert!(v["role"].is_null() && v["worker"].is_null());
    }

    #[test]
    fn levels_order_from_error_to_debug() {
        assert!(Level::Error < Level::Warn && Level::Warn < Level::Info && Level::Info < Level::Debug);
    }
}
