//! Logs through `tracing`: a human format (or JSON, for FluentD and CloudWatch) on stdout, and the same lines
//! appended to `logcopy/logcopy.log` on the volume, which is uploaded with the rest of the logs.
//!
//! Secrets never reach a log: the EvalAI token lives in [`crate::config::Secret`], whose `Debug` and `Display`
//! print `***`, and it is only ever read to build the Authorization header.

use crate::config::LogFormat;
use std::path::Path;
use std::sync::Mutex;
use tracing_subscriber::Layer;
use tracing_subscriber::filter::LevelFilter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use volume::safe::Root;

type BoxedLayer = Box<dyn Layer<tracing_subscriber::Registry> + Send + Sync>;

fn layer<W>(format: LogFormat, writer: W, ansi: bool) -> BoxedLayer
where
    W: for<'a> tracing_subscriber::fmt::MakeWriter<'a> + Send + Sync + 'static,
{
    let base = tracing_subscriber::fmt::layer().with_writer(writer).with_ansi(ansi).with_target(false);
    match format {
        LogFormat::Human => Box::new(base),
        LogFormat::Json => Box::new(base.json().with_current_span(true).with_span_list(false)),
    }
}

/// Installs the global subscriber. `volume_log` (a path beneath the volume's root) is appended to, never through a
/// symbolic link in any component; a failure to open it is returned as a message and logging goes on to stdout
/// alone.
pub fn init(format: LogFormat, level: LevelFilter, volume_log: Option<(&Root, &Path)>) -> Option<String> {
    let mut layers: Vec<BoxedLayer> = vec![layer(format, std::io::stdout, false)];
    let mut problem = None;
    if let Some((root, rel)) = volume_log {
        if let Some(dir) = rel.parent() {
            let _ = root.create_dir_all(dir);
        }
        match root.append(rel, 0o644) {
            Ok(f) => layers.push(layer(format, Mutex::new(f), false)),
            Err(e) => {
                let path = root.display(rel);
                problem = Some(format!("cannot append to {}: {e}; logging to stdout only", path.display()));
            }
        }
    }
    let _ = tracing_subscriber::registry().with(layers.with_filter(level)).try_init();
    problem
}
