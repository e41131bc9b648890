//! Logs through `tracing`: a human format (or JSON, for FluentD and CloudWatch) on stdout, and the same lines
//! appended to `logcopy/logcopy.log` on the volume, which is uploaded with the rest of the logs.
//!
//! Every entry is one line (log collectors split on newlines): a multi-line message or field (an SDK error's
//! chain of causes) has its lines joined with ` | `. A warning or an error that repeats (the same call site and
//! message, whatever its other fields: one S3 upload failing per file, or per sync) is written once, and the repeats within [`REPEAT_WINDOW`] of it are
//! counted and written as one line, the last of them with the count, when the window ends or at [`flush`].
//!
//! Secrets never reach a log: the EvalAI token lives in [`crate::config::Secret`], whose `Debug` and `Display`
//! print `***`, and it is only ever read to build the Authorization header.

use crate::config::LogFormat;
use std::collections::HashMap;
use std::hash::Hash;
use std::path::Path;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::filter::LevelFilter;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};
use volume::safe::Root;

type BoxedLayer = Box<dyn Layer<tracing_subscriber::Registry> + Send + Sync>;

/// How long the repeats of a warning or an error are counted before they are written as one line.
pub const REPEAT_WINDOW: Duration = Duration::from_secs(60);

/// The target of the event that [`flush`] sends: it writes what is held back, and nothing of its own.
const FLUSH_TARGET: &str = "logcopy::flush";

fn layer<S, W>(format: LogFormat, writer: W, window: Duration) -> Box<dyn Layer<S> + Send + Sync>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    W: for<'a> tracing_subscriber::fmt::MakeWriter<'a> + Send + Sync + 'static,
{
    let base = tracing_subscriber::fmt::layer().with_writer(writer).with_ansi(false);
    let inner = tracing_subscriber::fmt::format().with_target(false);
    match format {
        LogFormat::Human => Box::new(base.event_format(OneLine::new(inner, false, window))),
        LogFormat::Json => Box::new(base.json().event_format(OneLine::new(
            inner.json().with_current_span(true).with_span_list(false),
            true,
            window,
        ))),
    }
}

/// Installs the global subscriber. `volume_log` (a path beneath the volume's root) is appended to, never through a
/// symbolic link in any component; a failure to open it is returned as a message and logging goes on to stdout
/// alone.
pub fn init(format: LogFormat, level: LevelFilter, volume_log: Option<(&Root, &Path)>) -> Option<String> {
    let mut layers: Vec<BoxedLayer> = vec![layer(format, std::io::stdout, REPEAT_WINDOW)];
    let mut problem = None;
    if let Some((root, rel)) = volume_log {
        if let Some(dir) = rel.parent() {
            let _ = root.create_dir_all(dir);
        }
        match root.append(rel, 0o644) {
            Ok(f) => layers.push(layer(format, Mutex::new(f), REPEAT_WINDOW)),
            Err(e) => {
                let path = root.display(rel);
                problem = Some(format!("cannot append to {}: {e}; logging to stdout only", path.display()));
            }
        }
    }
    // RUST_LOG's directives on top of --log-level (its default), e.g. `RUST_LOG=aws_smithy_runtime=debug`.
    let env = std::env::var("RUST_LOG").ok().filter(|v| !v.trim().is_empty());
    let filter = env.map(|v| {
        let parsed = EnvFilter::builder().with_default_directive(level.into()).parse(&v);
        parsed.map_err(|e| format!("RUST_LOG ignored ({e}); --log-level / LOG_LEVEL applies"))
    });
    let _ = match filter {
        Some(Ok(f)) => tracing_subscriber::registry().with(layers.with_filter(f)).try_init(),
        Some(Err(e)) => {
            problem = Some(problem.map_or(e.clone(), |p| format!("{p}; {e}")));
            tracing_subscriber::registry().with(layers.with_filter(level)).try_init()
        }
        None => tracing_subscriber::registry().with(layers.with_filter(level)).try_init(),
    };
    problem
}

/// Writes the repeats held back (at the end of a run, so that no count is lost).
pub fn flush() {
    tracing::event!(target: FLUSH_TARGET, Level::ERROR, "");
}

/// `s` on one line: its lines, trimmed, joined with ` | ` (a trailing newline dropped).
pub fn one_line(s: &str) -> String {
    if !s.contains(['\n', '\r']) {
        return s.to_string();
    }
    let mut out = String::with_capacity(s.len());
    for (i, l) in s.lines().map(|l| l.trim_end_matches('\r')).filter(|l| !l.trim().is_empty()).enumerate() {
        if i == 0 {
            out.push_str(l.trim_end());
        } else {
            out.push_str(" | ");
            out.push_str(l.trim());
        }
    }
    out
}

/// Formats an event with `inner`, on one line, and holds back the repeats of a warning or an error.
struct OneLine<F> {
    inner: F,
    repeats: Mutex<Repeats<(tracing::callsite::Identifier, String)>>,
}

impl<F> OneLine<F> {
    fn new(inner: F, json: bool, window: Duration) -> Self {
        OneLine { inner, repeats: Mutex::new(Repeats::new(window, json)) }
    }
}

impl<S, N, F> FormatEvent<S, N> for OneLine<F>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
    F: FormatEvent<S, N>,
{
    fn format_event(&self, ctx: &FmtContext<'_, S, N>, mut writer: Writer<'_>, event: &Event<'_>) -> std::fmt::Result {
        let meta = event.metadata();
        let now = Instant::now();
        let lines = if meta.target() == FLUSH_TARGET {
            self.repeats.lock().unwrap_or_else(PoisonError::into_inner).flush(now, true)
        } else {
            let mut buf = String::new();
            self.inner.format_event(ctx, Writer::new(&mut buf), event)?;
            let key = (*meta.level() <= Level::WARN).then(|| (meta.callsite(), message(event)));
            self.repeats.lock().unwrap_or_else(PoisonError::into_inner).event(key, one_line(&buf), now)
        };
        for l in lines {
            writeln!(writer, "{l}")?;
        }
        Ok(())
    }
}

/// An event's message, without its other fields: the same failure of another file (a field) is a repeat, a
/// different message from the same place (`warn!("{m}")`) is not.
fn message(event: &Event<'_>) -> String {
    struct Message(String);
    impl tracing::field::Visit for Message {
        fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
            if field.name() == "message" {
                self.0 = value.to_string();
            }
        }
        fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
            if field.name() == "message" {
                self.0 = format!("{value:?}");
            }
        }
    }
    let mut m = Message(String::new());
    event.record(&mut m);
    m.0
}

/// Repeats of one kind of entry (a key: the call site), counted within a window from the first.
#[derive(Debug)]
pub struct Repeats<K> {
    window: Duration,
    json: bool,
    held: HashMap<K, Held>,
}

#[derive(Debug)]
struct Held {
    first: Instant,
    count: u32,
    /// The last repeat and when it came.
    last: Option<(String, Instant)>,
}

impl<K: Hash + Eq> Repeats<K> {
    /// `json`: the lines are JSON objects, which get the count as fields.
    pub fn new(window: Duration, json: bool) -> Self {
        Repeats { window, json, held: HashMap::new() }
    }

    /// The lines to write for an entry `line` at `now` (`key`: `None` for one that is never held back): the counts
    /// of the windows that have ended, then the line itself unless it repeats one written within the window.
    pub fn event(&mut self, key: Option<K>, line: String, now: Instant) -> Vec<String> {
        let mut out = self.flush(now, false);
        match key {
            None => out.push(line),
            Some(k) => match self.held.get_mut(&k) {
                Some(h) => {
                    h.count += 1;
                    h.last = Some((line, now));
                }
                None => {
                    out.push(line);
                    self.held.insert(k, Held { first: now, count: 0, last: None });
                }
            },
        }
        out
    }

    /// The count lines of the windows that ended by `now` (every window with `all`), oldest first.
    pub fn flush(&mut self, now: Instant, all: bool) -> Vec<String> {
        let (window, json) = (self.window, self.json);
        let mut out = Vec::new();
        self.held.retain(|_, h| {
            let ended = all || now.saturating_duration_since(h.first) >= window;
            if ended && let Some((line, at)) = h.last.take() {
                out.push((h.first, summary(&line, h.count, at.saturating_duration_since(h.first), json)));
            }
            !ended
        });
        out.sort_by_key(|(first, _)| *first);
        out.into_iter().map(|(_, l)| l).collect()
    }
}

/// The last repeat, with how many there were and over how long after the first, which was written.
fn summary(line: &str, count: u32, over: Duration, json: bool) -> String {
    let over = if over < Duration::from_secs(1) {
        format!("{} ms", over.as_millis())
    } else {
        format!("{} s", over.as_secs())
    };
    match line.strip_suffix('}') {
        Some(object) if json => format!("{object},\"repeated\":{count},\"repeated_over\":\"{over}\"}}"),
        _ => format!("{line} (x{count} more in {over} after the first)"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn lines_are_joined() {
        assert_eq!(one_line("a"), "a");
        assert_eq!(one_line("a\n"), "a");
        assert_eq!(
            one_line("dispatch failure\n  caused by: io\r\n\n    refused\n"),
            "dispatch failure | caused by: io | refused"
        );
    }

    #[test]
    fn repeats_are_counted_in_one_line_per_window() {
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        let mut r = Repeats::new(Duration::from_secs(60), false);
        let mut written = Vec::new();
        for i in 0..33 {
            written.extend(r.event(Some("put"), format!("S3 PUT failed: key {i}"), at(i)));
        }
        assert_eq!(written, ["S3 PUT failed: key 0"], "the first at once, the repeats held back");
        // Another kind is not held back by this one; an info line never is.
        assert_eq!(r.event(Some("get"), "GET failed".into(), at(40)), ["GET failed"]);
        assert_eq!(r.event(None, "info".into(), at(41)), ["info"]);
        assert_eq!(r.event(None, "info".into(), at(42)), ["info"]);
        // The window ends: the count comes with the next line, whatever it is.
        assert_eq!(
            r.event(None, "info".into(), at(61)),
            ["S3 PUT failed: key 32 (x32 more in 32 s after the first)", "info"]
        );
        // A repeat after the window is written again and starts a new one.
        assert_eq!(r.event(Some("put"), "S3 PUT failed: key 99".into(), at(70)), ["S3 PUT failed: key 99"]);
        assert!(r.event(Some("put"), "S3 PUT failed: key 100".into(), at(71)).is_empty());
        // The flush at the end writes every count held, the window over or not; one with no repeat writes nothing.
        assert_eq!(r.flush(at(72), true), ["S3 PUT failed: key 100 (x1 more in 1 s after the first)"]);
        assert!(r.flush(at(73), true).is_empty());
        let mut j = Repeats::new(Duration::from_secs(60), true);
        j.event(Some(1), r#"{"level":"WARN"}"#.into(), t0);
        j.event(Some(1), r#"{"level":"WARN","n":2}"#.into(), t0 + Duration::from_millis(400));
        assert_eq!(j.flush(at(1), true), [r#"{"level":"WARN","n":2,"repeated":1,"repeated_over":"400 ms"}"#]);
    }

    /// The formatter as installed: 33 failures with a multi-line error are two lines in all, each one line.
    #[test]
    fn every_entry_is_one_line_and_repeats_collapse() {
        #[derive(Clone, Default)]
        struct Buf(Arc<Mutex<Vec<u8>>>);
        impl std::io::Write for Buf {
            fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(b);
                Ok(b.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        for format in [LogFormat::Human, LogFormat::Json] {
            let buf = Buf::default();
            let b = buf.clone();
            let subscriber = tracing_subscriber::registry().with(layer(format, move || b.clone(), REPEAT_WINDOW));
            tracing::subscriber::with_default(subscriber, || {
                for i in 0..33 {
                    let e = format!("put {i}/agent.log: dispatch failure\n  caused by: no credentials\n    in chain");
                    tracing::warn!(error = %e, "upload failed; it will be retried at the next sync");
                }
                for m in ["worker 1's file is bad", "worker 2's file is bad"] {
                    tracing::warn!("{m}");
                }
                tracing::info!("multi\nline info");
                flush();
            });
            let text = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
            let lines: Vec<&str> = text.lines().collect();
            assert_eq!(lines.len(), 5, "{format:?}: {text}");
            assert!(lines[0].contains("put 0/agent.log: dispatch failure") && lines[4].contains("put 32/"), "{text}");
            assert!(lines[1].contains("worker 1's") && lines[2].contains("worker 2's"), "another message: {text}");
            let lines = [lines[0], lines[3], lines[4]];
            match format {
                LogFormat::Human => {
                    assert!(lines[0].contains("dispatch failure | caused by: no credentials | in chain"), "{text}");
                    assert!(lines[1].contains("multi | line info"), "{text}");
                    assert!(lines[2].contains("(x32 more in ") && lines[2].ends_with(" after the first)"), "{text}");
                }
                LogFormat::Json => {
                    // JSON escapes the newlines: the entry is one line, and its text intact.
                    for l in &lines {
                        serde_json::from_str::<serde_json::Value>(l).unwrap_or_else(|e| panic!("{e}: {l}"));
                    }
                    assert!(lines[2].contains("\"repeated\":32"), "{text}");
                }
            }
        }
    }
}
