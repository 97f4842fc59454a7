//! What triggers a config reload: SIGHUP, or a change to one of the files
//! the config was read from (the config, the rules file, App Certificate
//! and HS secret files, JWKS files, TLS PEM files), seen with `notify`.
//!
//! The watch is on each file's folder, not the file: Kubernetes updates a
//! mounted ConfigMap or Secret by writing a new `..<timestamp>` folder and
//! renaming the `..data` symlink over the old one, so the paths the config
//! names (symlinks through `..data`) never see an event of their own, and an
//! editor's or `sed -i`'s write-to-temporary-then-rename replaces the file's
//! inode, which a watch on the file itself would lose. So an event counts
//! when it is about a watched file or a `..`-prefixed entry (the atomic
//! writer's) in a watched folder; reads (our own, during a reload) never do.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use notify::event::{AccessKind, AccessMode};
use notify::{Event, EventKind, RecommendedWatcher, RecursiveMode, Watcher as _};
use tokio::sync::mpsc;

/// How long the files must stay quiet before a change triggers a reload.
/// One change is several events (a Secret update renames `..data` after
/// writing every file; `cp` of a certificate and then its key is two
/// writes; an editor writes, renames and chmods), and a reload in the middle
/// would read a half-updated set and refuse it. 500 ms covers a script that
/// copies several files in a row, and is nothing next to the kubelet's
/// minute-scale sync of a mounted volume.
const DEBOUNCE: Duration = Duration::from_millis(500);
/// The most debounce windows one reload waits for while events keep coming,
/// so a file rewritten without pause (a log in a watched folder) cannot
/// hold a reload off for ever: 20 windows, 10 s.
const MAX_DEBOUNCE_WINDOWS: usize = 20;
/// Events queued between reloads; more are dropped, since one reload is pending anyway.
const QUEUE: usize = 64;

/// Why a reload ran, for its log line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Trigger {
    /// A SIGHUP.
    Signal,
    /// A watched file (the first one seen) changed.
    File(PathBuf),
}

/// The SIGHUP stream, when the handler could be installed.
#[cfg(unix)]
type Hangup = Option<tokio::signal::unix::Signal>;
/// No SIGHUP off Unix.
#[cfg(not(unix))]
type Hangup = ();

/// The reload triggers: the SIGHUP stream and the file watcher's events.
pub(super) struct Triggers {
    hangup: Hangup,
    events: mpsc::Receiver<PathBuf>,
    /// Keeps `events` open when the watcher could not start.
    _sender: mpsc::Sender<PathBuf>,
    watcher: Option<RecommendedWatcher>,
    /// The folders watched.
    dirs: BTreeSet<PathBuf>,
    /// The files whose events count, shared with the watcher's callback.
    files: Arc<Mutex<BTreeSet<PathBuf>>>,
}

impl std::fmt::Display for Trigger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Trigger::Signal => f.write_str("SIGHUP"),
            Trigger::File(path) => write!(f, "file {}", path.display()),
        }
    }
}

impl std::fmt::Debug for Triggers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Triggers")
            .field("dirs", &self.dirs)
            .finish_non_exhaustive()
    }
}

impl Triggers {
    /// Installs the SIGHUP handler (from now on a SIGHUP no longer ends the
    /// process) and watches the folders of `files`. Either failing is logged
    /// and leaves the other trigger working.
    pub(super) fn start(files: &[PathBuf]) -> Self {
        #[cfg(unix)]
        let hangup: Hangup = match tokio::signal::unix::signal(
            tokio::signal::unix::SignalKind::hangup(),
        ) {
            Ok(signal) => Some(signal),
            Err(error) => {
                tracing::warn!(%error, "cannot handle SIGHUP; config reloads follow file changes only");
                None
            }
        };
        #[cfg(not(unix))]
        let hangup: Hangup = ();
        let (sender, events) = mpsc::channel(QUEUE);
        let shared: Arc<Mutex<BTreeSet<PathBuf>>> = Arc::default();
        let counted = Arc::clone(&shared);
        let tx = sender.clone();
        let watcher = notify::recommended_watcher(move |event: notify::Result<Event>| {
            let Ok(event) = event else {
                return;
            };
            if let Some(path) = relevant(&event, &lock(&counted)) {
                // Full: a reload is pending already.
                let _ = tx.try_send(path);
            }
        });
        let watcher = match watcher {
            Ok(watcher) => Some(watcher),
            Err(error) => {
                tracing::warn!(%error, "cannot watch the config's files; config reloads follow SIGHUP only");
                None
            }
        };
        let mut triggers = Self {
            hangup,
            events,
            _sender: sender,
            watcher,
            dirs: BTreeSet::new(),
            files: shared,
        };
        triggers.watch(files);
        triggers
    }

    /// Watches the folders of `files` from now on (the files of the config
    /// in force), and no other.
    pub(super) fn watch(&mut self, files: &[PathBuf]) {
        let files: BTreeSet<PathBuf> = files
            .iter()
            .filter_map(|path| std::path::absolute(path).ok())
            .collect();
        let dirs: BTreeSet<PathBuf> = files
            .iter()
            .filter_map(|path| path.parent().map(Path::to_path_buf))
            .collect();
        *lock(&self.files) = files;
        let Some(watcher) = &mut self.watcher else {
            return;
        };
        for gone in self.dirs.difference(&dirs) {
            let _ = watcher.unwatch(gone);
        }
        for dir in dirs.difference(&self.dirs) {
            if let Err(error) = watcher.watch(dir, RecursiveMode::NonRecursive) {
                tracing::warn!(dir = %dir.display(), %error, "cannot watch a folder of the config's files; SIGHUP still reloads");
            }
        }
        self.dirs = dirs;
    }

    /// The next reload trigger: a SIGHUP at once, a file change once the
    /// files have been quiet for [`DEBOUNCE`] (a SIGHUP meanwhile cuts the
    /// wait short: the operator asked for a reload now).
    pub(super) async fn next(&mut self) -> Option<Trigger> {
        let first = tokio::select! {
            () = hangup(&mut self.hangup) => return Some(Trigger::Signal),
            path = self.events.recv() => path?,
        };
        for _ in 0..MAX_DEBOUNCE_WINDOWS {
            tokio::select! {
                () = hangup(&mut self.hangup) => return Some(Trigger::Signal),
                event = tokio::time::timeout(DEBOUNCE, self.events.recv()) => match event {
                    Ok(Some(_)) => {}
                    Ok(None) | Err(_) => break,
                },
            }
        }
        Some(Trigger::File(first))
    }
}

/// Completes at the next SIGHUP; never without a handler.
async fn hangup(signal: &mut Hangup) {
    #[cfg(unix)]
    if let Some(signal) = signal
        && signal.recv().await.is_some()
    {
        return;
    }
    #[cfg(not(unix))]
    let _ = signal;
    std::future::pending::<()>().await;
}

/// The watched path an event is about, if it counts: a change (not a read)
/// to a watched file, or to a `..` entry of Kubernetes' atomic writer.
fn relevant(event: &Event, files: &BTreeSet<PathBuf>) -> Option<PathBuf> {
    let counts = match event.kind {
        // A write's close is the end of a write; every other access is a
        // read, our own reload's among them.
        EventKind::Access(kind) => kind == AccessKind::Close(AccessMode::Write),
        _ => true,
    };
    if !counts {
        return None;
    }
    event
        .paths
        .iter()
        .find(|path| {
            files.contains(*path)
                || path
                    .file_name()
                    .and_then(|name| name.to_str())
                    .is_some_and(|name| name.starts_with(".."))
        })
        .cloned()
}

/// The watched set, even after a panic elsewhere held the lock.
fn lock(files: &Mutex<BTreeSet<PathBuf>>) -> std::sync::MutexGuard<'_, BTreeSet<PathBuf>> {
    files
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;
    use notify::event::{CreateKind, ModifyKind, RenameMode};

    #[test]
    fn writes_renames_and_the_atomic_writer_count_and_reads_do_not() {
        let files: BTreeSet<PathBuf> = [PathBuf::from("/etc/tg/config.toml")].into();
        let event = |kind, path: &str| Event::new(kind).add_path(PathBuf::from(path));
        let cases = [
            (
                event(
                    EventKind::Modify(ModifyKind::Name(RenameMode::To)),
                    "/etc/tg/config.toml",
                ),
                true,
            ),
            (
                event(EventKind::Create(CreateKind::File), "/etc/tg/..data"),
                true,
            ),
            (
                event(
                    EventKind::Access(AccessKind::Close(AccessMode::Write)),
                    "/etc/tg/config.toml",
                ),
                true,
            ),
            (
                event(
                    EventKind::Access(AccessKind::Close(AccessMode::Read)),
                    "/etc/tg/config.toml",
                ),
                false,
            ),
            (
                event(
                    EventKind::Access(AccessKind::Open(AccessMode::Any)),
                    "/etc/tg/config.toml",
                ),
                false,
            ),
            (
                event(EventKind::Create(CreateKind::File), "/etc/tg/other.log"),
                false,
            ),
        ];
        for (event, counts) in cases {
            assert_eq!(relevant(&event, &files).is_some(), counts, "{event:?}");
        }
    }
}
