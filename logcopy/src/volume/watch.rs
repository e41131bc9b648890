//! Watching the volume: `notify` events as hints, debounced on the trailing edge, with a periodic full rescan
//! as the fallback for events that are lost (a full queue, an overflow, a folder created between two reads).
//!
//! Upstream polls every 10 s (logcopy) or 30 s (monitor); here a results file rewritten by the evaluator is merged
//! within the debounce delay. Events go into a bounded channel and are dropped when it is full: a dropped event
//! can only delay work until the next event or rescan, never lose it, because each cycle re-reads the files.

use notify::event::{AccessKind, AccessMode};
use notify::{Config, Event, EventKind, RecommendedWatcher, RecursiveMode, Watcher};
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::time::Instant;

/// A running watcher; dropping it stops the watch.
pub struct VolumeWatcher {
    _watcher: RecommendedWatcher,
}

/// Starts a recursive watch of `root`; changed paths arrive on the returned channel.
pub fn watch(root: &Path) -> notify::Result<(VolumeWatcher, mpsc::Receiver<Vec<PathBuf>>)> {
    let (tx, rx) = mpsc::channel(256);
    let handler = move |res: notify::Result<Event>| {
        // A full channel drops the hint; an error (e.g. queue overflow) is sent as an empty hint, which still
        // wakes the loop for a full cycle.
        let paths = match res {
            Ok(e) if !is_change(&e.kind) => return,
            Ok(e) => e.paths,
            Err(_) => Vec::new(),
        };
        let _ = tx.try_send(paths);
    };
    // Never follow symlinks while adding watches: a link to / or to a loop must not be walked.
    let mut watcher = RecommendedWatcher::new(handler, Config::default().with_follow_symlinks(false))?;
    watcher.watch(root, RecursiveMode::Recursive)?;
    Ok((VolumeWatcher { _watcher: watcher }, rx))
}

/// Whether an event can mean new content. Opening or reading a file or folder cannot: logcopy's own reads (the
/// status folder every cycle, the volume walk of the S3 sync) would otherwise wake it again and again.
pub fn is_change(kind: &EventKind) -> bool {
    match kind {
        EventKind::Access(AccessKind::Close(AccessMode::Write)) => true,
        EventKind::Access(_) => false,
        _ => true,
    }
}

/// A trailing-edge debouncer: it fires once a burst has been quiet for `quiet`, and never later than `max`
/// after the burst's first event.
#[derive(Debug, Clone)]
pub struct Debounce {
    quiet: Duration,
    max: Duration,
    first: Option<Instant>,
    last: Option<Instant>,
}

impl Debounce {
    /// `max` is the longest delay from the first event to the firing; the quiet period is a fifth of it.
    pub fn new(max: Duration) -> Self {
        Debounce { quiet: max / 5, max, first: None, last: None }
    }

    pub fn event(&mut self, now: Instant) {
        self.first.get_or_insert(now);
        self.last = Some(now);
    }

    /// When the pending burst should be handled, if one is pending.
    pub fn deadline(&self) -> Option<Instant> {
        let (first, last) = (self.first?, self.last?);
        Some((last + self.quiet).min(first + self.max))
    }

    pub fn clear(&mut self) {
        self.first = None;
        self.last = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn debounce_fires_after_quiet_and_caps_long_bursts() {
        let t0 = Instant::now();
        let mut d = Debounce::new(Duration::from_millis(250));
        assert_eq!(d.deadline(), None);
        d.event(t0);
        assert_eq!(d.deadline(), Some(t0 + Duration::from_millis(50)));
        // A steady stream of events every 20 ms never waits more than 250 ms in all.
        for k in 1..20 {
            d.event(t0 + Duration::from_millis(20 * k));
        }
        assert_eq!(d.deadline(), Some(t0 + Duration::from_millis(250)));
        d.clear();
        assert_eq!(d.deadline(), None);
    }

    #[test]
    fn reads_are_not_changes() {
        use notify::event::{CreateKind, ModifyKind};
        assert!(!is_change(&EventKind::Access(AccessKind::Open(AccessMode::Any))));
        assert!(!is_change(&EventKind::Access(AccessKind::Close(AccessMode::Read))));
        assert!(is_change(&EventKind::Access(AccessKind::Close(AccessMode::Write))));
        assert!(is_change(&EventKind::Create(CreateKind::File)));
        assert!(is_change(&EventKind::Modify(ModifyKind::Any)));
    }

    #[tokio::test]
    async fn reads_of_the_volume_wake_nobody() {
        let dir = std::env::temp_dir().join(format!("logcopy-watch-reads-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("containers-status")).unwrap();
        std::fs::write(dir.join("containers-status/agent-1.start0"), b"").unwrap();
        let (_w, mut rx) = watch(&dir).unwrap();
        for _ in 0..5 {
            let _ = std::fs::read_dir(dir.join("containers-status")).unwrap().count();
            let _ = std::fs::read(dir.join("containers-status/agent-1.start0")).unwrap();
        }
        let got = tokio::time::timeout(Duration::from_millis(500), rx.recv()).await;
        assert!(got.is_err(), "reading the volume produced a change event: {got:?}");
    }

    #[tokio::test]
    async fn reports_changes_and_ignores_nothing_it_should_see() {
        let dir = std::env::temp_dir().join(format!("logcopy-watch-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("agent/agent1")).unwrap();
        let (_w, mut rx) = watch(&dir).unwrap();
        std::fs::write(dir.join("agent/agent1/agent_results.json"), b"{}").unwrap();
        let got = tokio::time::timeout(Duration::from_secs(5), async {
            loop {
                let paths = rx.recv().await.unwrap();
                if paths.iter().any(|p| p.ends_with("agent_results.json")) {
                    return paths;
                }
            }
        })
        .await
        .expect("no event for a rewritten results file");
        assert!(got[0].starts_with(&dir));
    }
}
