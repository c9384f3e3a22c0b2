//! Watching files: a call back when one's content has changed and settled.
//!
//! A [`Watcher`] watches directories, never a file's inode: an editor renames a new
//! file over the old one and Kubernetes flips a `..data` symlink to a new directory,
//! and both leave a watch on the old inode looking at nothing. For each file it
//! watches the directory of every symlink on the way to it and the directory the file
//! itself is in, and it walks that way again after every change, so a flip moves the
//! watch along.
//!
//! A change is reported once it has settled: no event on the way to the file for
//! [`SETTLE`], and no writer still holding it open (a `cp` writes in pieces; the
//! kernel says when the writer closes it). Then the content's [`Fingerprint`] decides:
//! a `touch` or a rewrite of the same bytes is no change, and neither is a file that
//! cannot be read or is empty (half-written), until it comes back different.
//!
//! This module owns that bookkeeping and nothing else: it knows nothing of plugins,
//! listeners or servers. Each file is watched under a name the caller picks; what a
//! change means is the caller's (`control` swaps a listener's plugin in). It reads a
//! file only through the caller's fingerprint.
//!
//! Its tests are a third of the file: they drive real files through renames, copies
//! and symlink flips, and share one fixture, so they stay beside the code.

use std::collections::{BTreeSet, HashSet};
use std::ffi::OsString;
use std::fs;
use std::io;
use std::path::{Component, Path, PathBuf};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use notify::event::{AccessKind, AccessMode, CreateKind, ModifyKind};
use notify::{Event, EventKind, RecommendedWatcher, RecursiveMode, Watcher as _};
use tracing::{debug, warn};

/// Quiet time after the last event on the way to a file before its content is
/// checked: long enough for a writer's next piece, short enough to feel immediate.
pub const SETTLE: Duration = Duration::from_millis(300);

/// Quiet time after which a file still open for writing is checked all the same: a
/// writer that keeps it open for good, or a link made without a write.
pub const STALE_WRITER: Duration = Duration::from_secs(10);

/// How often a watcher asks for its [`Baseline`] until it has one.
const BASELINE_POLL: Duration = Duration::from_millis(20);

/// Symlinks followed on the way to a file before giving up, as the kernel does.
const MAX_SYMLINKS: usize = 40;

/// Why files cannot be watched.
#[derive(Debug, thiserror::Error)]
pub enum WatchError {
    /// The platform's file notifications could not be set up.
    #[error("cannot watch files: {0}")]
    Start(#[source] notify::Error),
    /// A directory on the way to a file cannot be watched.
    #[error("`{name}`: cannot watch {} for changes to {}: {source}", dir.display(), file.display())]
    Watch {
        /// The name the file is watched under.
        name: String,
        /// The file.
        file: PathBuf,
        /// The directory on the way to it.
        dir: PathBuf,
        /// Why.
        source: Box<notify::Error>,
    },
    /// The watcher's thread could not be started.
    #[error("cannot start the file watcher's thread: {0}")]
    Thread(#[source] io::Error),
}

/// Watches files and calls back, on its own thread, when one's content has changed and
/// settled. Dropping it stops the thread (after a call back under way).
pub struct Watcher {
    state: Arc<Mutex<State>>,
    wake: Sender<Message>,
    thread: Option<JoinHandle<()>>,
}

/// What is called back with a file's name, path and new fingerprint.
type OnChange = Box<dyn FnMut(&str, &Path, &str) + Send>;

/// What tells one content of a file from another (a content hash); `None` while the
/// file cannot be read or is empty. It must not block: the watcher's thread calls it.
pub type Fingerprint = Arc<dyn Fn(&Path) -> Option<String> + Send + Sync>;

/// The fingerprints, as `(name, fingerprint)`, that the files are compared with at
/// first, once the caller knows them (`None`: not yet; asked again shortly). Events
/// that come meanwhile are noted, not lost, and every named file is checked against
/// it, so a change made before it was known is reported all the same.
pub type Baseline = Box<dyn FnMut() -> Option<Vec<(String, String)>> + Send>;

impl Watcher {
    /// Watch each file, given as `(name, file)`, and call `on_change(name, file,
    /// fingerprint)` when
    /// its content has changed and settled. The content each file has now is the one
    /// later ones are compared with, or, with a `baseline`, the fingerprint it gives.
    pub fn start(
        files: Vec<(String, PathBuf)>,
        fingerprint: Fingerprint,
        baseline: Option<Baseline>,
        on_change: impl FnMut(&str, &Path, &str) + Send + 'static,
    ) -> Result<Watcher, WatchError> {
        let on_change: OnChange = Box::new(on_change);
        let (wake, messages) = mpsc::channel();
        let events = wake.clone();
        let notify = notify::recommended_watcher(move |event| {
            // The receiver is gone only once the watcher's thread has ended.
            let _ = events.send(Message::Event(event));
        })
        .map_err(WatchError::Start)?;
        let files = files
            .into_iter()
            .map(|(name, path)| Watched::new(name, std::path::absolute(&path).unwrap_or(path), &fingerprint))
            .collect();
        let mut state = State { notify, files, dirs: HashSet::new(), fingerprint };
        state.rewatch()?;
        let state = Arc::new(Mutex::new(state));
        let shared = Arc::clone(&state);
        let thread = std::thread::Builder::new()
            .name("sandport-watch".into())
            .spawn(move || run(&shared, &messages, on_change, baseline))
            .map_err(WatchError::Thread)?;
        Ok(Watcher { state, wake, thread: Some(thread) })
    }

    /// Watch these files instead of the ones watched now. A name that keeps its file
    /// keeps its last seen content; for a new name or file, the content it has now is
    /// the one later ones are compared with.
    pub fn set(&self, files: Vec<(String, PathBuf)>) -> Result<(), WatchError> {
        let mut state = lock(&self.state);
        let mut old = std::mem::take(&mut state.files);
        state.files = files
            .into_iter()
            .map(|(name, path)| {
                let path = std::path::absolute(&path).unwrap_or(path);
                match old.iter().position(|f| f.name == name && f.path == path) {
                    Some(kept) => old.swap_remove(kept),
                    None => Watched::new(name, path, &state.fingerprint),
                }
            })
            .collect();
        state.rewatch()
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        // The thread only ends on this (or a closed channel, which it holds itself).
        let _ = self.wake.send(Message::Stop);
        if let Some(thread) = self.thread.take() {
            // A panic in a call back is already reported; nothing is left to stop.
            let _ = thread.join();
        }
    }
}

/// What wakes the watcher's thread.
enum Message {
    /// The platform saw something happen in a watched directory.
    Event(notify::Result<Event>),
    /// The [`Watcher`] is being dropped.
    Stop,
}

/// The files watched and the directories watched for them, shared by the
/// [`Watcher`] (to replace the files) and its thread.
struct State {
    notify: RecommendedWatcher,
    files: Vec<Watched>,
    /// The directories watched now: every directory of every file's [`Way`].
    dirs: HashSet<PathBuf>,
    fingerprint: Fingerprint,
}

/// One watched file.
struct Watched {
    /// The name the caller watches it under.
    name: String,
    /// As configured, made absolute.
    path: PathBuf,
    way: Way,
    /// The content's fingerprint when last seen; `None` until it has been there,
    /// non-empty.
    hash: Option<String>,
    /// When the latest event that may have changed it came, unless checked since.
    changed: Option<Instant>,
    /// Whether a writer may still be writing it: written since it was last closed.
    writing: bool,
}

/// The way to a file: what the kernel looks up to open it.
#[derive(Default)]
struct Way {
    /// Every name whose change changes what the file reads: each symlink on the way,
    /// and the last name (the file itself, or the first name that is missing).
    names: Vec<PathBuf>,
    /// The directories those names are in, without symlinks: what is watched.
    dirs: BTreeSet<PathBuf>,
}

impl Watched {
    fn new(name: String, path: PathBuf, fingerprint: &Fingerprint) -> Watched {
        let hash = fingerprint(&path);
        Watched { name, way: Way::to(&path), path, hash, changed: None, writing: false }
    }

    /// The file itself, or where it would be.
    fn target(&self) -> Option<&Path> {
        self.way.names.last().map(PathBuf::as_path)
    }

    fn concerns(&self, path: &Path) -> bool {
        self.way.names.iter().any(|name| name == path) || self.way.dirs.contains(path)
    }
}

impl Way {
    /// Walks `path` as the kernel would, noting each symlink and the last name.
    fn to(path: &Path) -> Way {
        /// A step still to take, last first.
        enum Step {
            Root,
            Up,
            Name(OsString),
        }
        fn steps(path: &Path) -> impl Iterator<Item = Step> + '_ {
            path.components().rev().filter_map(|component| match component {
                Component::RootDir => Some(Step::Root),
                Component::ParentDir => Some(Step::Up),
                Component::Normal(name) => Some(Step::Name(name.to_owned())),
                Component::CurDir | Component::Prefix(_) => None,
            })
        }
        let mut way = Way::default();
        let mut pending: Vec<Step> = steps(path).collect();
        let mut dir = PathBuf::from("/");
        let mut symlinks = 0;
        while let Some(step) = pending.pop() {
            let name = match step {
                Step::Root => {
                    dir = PathBuf::from("/");
                    continue;
                }
                Step::Up => {
                    dir.pop();
                    continue;
                }
                Step::Name(name) => dir.join(name),
            };
            match fs::symlink_metadata(&name) {
                Ok(meta) if meta.file_type().is_symlink() && symlinks < MAX_SYMLINKS => {
                    let Ok(target) = fs::read_link(&name) else {
                        way.names.push(name);
                        break;
                    };
                    symlinks += 1;
                    way.names.push(name);
                    pending.extend(steps(&target));
                }
                Ok(_) if !pending.is_empty() => dir = name,
                // The file itself, or the first name that is missing: whatever comes
                // there next is what the file reads.
                _ => {
                    way.names.push(name);
                    break;
                }
            }
        }
        way.dirs = way.names.iter().filter_map(|name| name.parent()).map(Path::to_path_buf).collect();
        way
    }
}

impl State {
    /// Takes note of an event: the files it concerns have maybe changed.
    fn note(&mut self, event: notify::Result<Event>, now: Instant) {
        let event = match event {
            Ok(event) if !event.need_rescan() && !event.paths.is_empty() => event,
            Ok(_) => return self.all_changed(now),
            Err(err) => {
                warn!("watching files: {err}; checking them all");
                return self.all_changed(now);
            }
        };
        // Whether a writer has the file open after this: `None` if this says nothing.
        let writing = match event.kind {
            EventKind::Access(AccessKind::Close(AccessMode::Write)) => Some(false),
            // Reads (ours too), opens and metadata (a `touch`) change no content.
            EventKind::Access(_) | EventKind::Modify(ModifyKind::Metadata(_)) => return,
            EventKind::Modify(ModifyKind::Data(_)) | EventKind::Create(CreateKind::File) => Some(true),
            EventKind::Modify(ModifyKind::Name(_)) | EventKind::Remove(_) => Some(false),
            _ => None,
        };
        for path in &event.paths {
            // notify forgets a directory that is removed or renamed; so does this, and
            // the next check watches it again if it is still on some file's way.
            if self.dirs.contains(path)
                && matches!(event.kind, EventKind::Remove(_) | EventKind::Modify(ModifyKind::Name(_)))
            {
                let _ = self.notify.unwatch(path);
                self.dirs.remove(path);
            }
            for file in self.files.iter_mut().filter(|file| file.concerns(path)) {
                file.changed = Some(now);
                if let Some(writing) = writing.filter(|_| file.target() == Some(path.as_path())) {
                    file.writing = writing;
                }
            }
        }
    }

    /// Takes the baseline as the content last seen, and checks every file against it.
    fn learn(&mut self, baseline: &[(String, String)], now: Instant) {
        for file in &mut self.files {
            if let Some((_, hash)) = baseline.iter().find(|(name, _)| *name == file.name) {
                file.hash = Some(hash.clone());
                file.changed = Some(now);
            }
        }
    }

    fn all_changed(&mut self, now: Instant) {
        for file in &mut self.files {
            file.changed = Some(now);
        }
    }

    /// When the next file settles.
    fn next_check(&self) -> Option<Instant> {
        self.files.iter().filter_map(settles).min()
    }

    /// The files settled by `now`, no longer marked changed, with their ways walked
    /// again and watched.
    fn take_settled(&mut self, now: Instant) -> Vec<usize> {
        let settled: Vec<usize> =
            (0..self.files.len()).filter(|&i| settles(&self.files[i]).is_some_and(|at| at <= now)).collect();
        for &i in &settled {
            let file = &mut self.files[i];
            file.changed = None;
            file.writing = false;
            file.way = Way::to(&file.path);
        }
        if !settled.is_empty()
            && let Err(err) = self.rewatch()
        {
            warn!("{err}; checking again on the next change");
        }
        settled
    }

    /// Watches every directory on the files' ways and no other. Tries them all and
    /// returns the first failure.
    fn rewatch(&mut self) -> Result<(), WatchError> {
        let wanted: HashSet<PathBuf> = self.files.iter().flat_map(|file| file.way.dirs.iter().cloned()).collect();
        for dir in self.dirs.difference(&wanted) {
            // A directory that is gone is no longer watched anyway.
            let _ = self.notify.unwatch(dir);
        }
        self.dirs.retain(|dir| wanted.contains(dir));
        let mut failed = None;
        for dir in wanted {
            if self.dirs.contains(&dir) {
                continue;
            }
            match self.notify.watch(&dir, RecursiveMode::NonRecursive) {
                Ok(()) => {
                    self.dirs.insert(dir);
                }
                Err(source) => {
                    let file = self
                        .files
                        .iter()
                        .find(|file| file.way.dirs.contains(&dir))
                        .expect("every wanted directory is on a file's way");
                    failed.get_or_insert(WatchError::Watch {
                        name: file.name.clone(),
                        file: file.path.clone(),
                        dir,
                        source: Box::new(source),
                    });
                }
            }
        }
        failed.map_or(Ok(()), Err)
    }
}

/// When `file` settles, if it has maybe changed.
fn settles(file: &Watched) -> Option<Instant> {
    let quiet = if file.writing { STALE_WRITER } else { SETTLE };
    file.changed.map(|at| at + quiet)
}

/// The watcher's thread: learns the baseline, takes note of events, checks settled
/// files, calls back.
fn run(state: &Mutex<State>, messages: &Receiver<Message>, mut on_change: OnChange, baseline: Option<Baseline>) {
    if let Some(baseline) = baseline
        && !learn(state, messages, baseline)
    {
        return;
    }
    loop {
        let next_check = lock(state).next_check();
        let message = match next_check {
            None => messages.recv().ok(),
            Some(at) => match messages.recv_timeout(at.saturating_duration_since(Instant::now())) {
                Ok(message) => Some(message),
                Err(RecvTimeoutError::Timeout) => None,
                Err(RecvTimeoutError::Disconnected) => return,
            },
        };
        let mut stopping = false;
        match message {
            Some(Message::Event(event)) => lock(state).note(event, Instant::now()),
            Some(Message::Stop) => return,
            None if next_check.is_none() => return,
            None => {}
        }
        let changed = check(&mut lock(state), messages, &mut stopping);
        for (name, file, fingerprint) in changed {
            on_change(&name, &file, &fingerprint);
        }
        if stopping {
            return;
        }
    }
}

/// Waits until the baseline is known and learns it; false if stopped meanwhile.
/// Events that come meanwhile are noted, not lost.
fn learn(state: &Mutex<State>, messages: &Receiver<Message>, mut baseline: Baseline) -> bool {
    loop {
        if let Some(baseline) = baseline() {
            lock(state).learn(&baseline, Instant::now());
            return true;
        }
        match messages.recv_timeout(BASELINE_POLL) {
            Ok(Message::Event(event)) => lock(state).note(event, Instant::now()),
            Ok(Message::Stop) | Err(RecvTimeoutError::Disconnected) => return false,
            Err(RecvTimeoutError::Timeout) => {}
        }
    }
}

/// Fingerprints the settled files and returns those whose content changed, with their
/// new fingerprints, unless an event came for one while it was read (then it is not
/// settled after all).
fn check(state: &mut State, messages: &Receiver<Message>, stopping: &mut bool) -> Vec<(String, PathBuf, String)> {
    let settled = state.take_settled(Instant::now());
    if settled.is_empty() {
        return Vec::new();
    }
    let hashes: Vec<(usize, Option<String>)> =
        settled.into_iter().map(|i| (i, (state.fingerprint)(&state.files[i].path))).collect();
    while let Ok(message) = messages.try_recv() {
        match message {
            Message::Event(event) => state.note(event, Instant::now()),
            Message::Stop => *stopping = true,
        }
    }
    let mut changed = Vec::new();
    for (i, hash) in hashes {
        let file = &mut state.files[i];
        let Some(hash) = hash.filter(|hash| file.changed.is_none() && file.hash.as_ref() != Some(hash)) else {
            continue;
        };
        debug!(name = %file.name, file = %file.path.display(), hash = %hash, "file settled with new content");
        file.hash = Some(hash.clone());
        changed.push((file.name.clone(), file.path.clone(), hash));
    }
    changed
}

fn lock(state: &Mutex<State>) -> MutexGuard<'_, State> {
    // Nothing here leaves the state half-changed on a panic.
    state.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use std::fs::{File, OpenOptions};
    use std::io::Write;
    use std::os::unix::fs::symlink;
    use std::time::SystemTime;

    use tempfile::TempDir;

    use super::*;

    /// Time any single expectation may take before the test fails.
    const PATIENCE: Duration = Duration::from_secs(20);

    /// The name of the file every test changes to learn that the watcher has
    /// caught up: it is watched last, so its change settles after every earlier one.
    const SENTINEL: &str = "sentinel";

    /// A watcher over files in a temporary directory, and what it called back with.
    struct Fixture {
        watcher: Watcher,
        fired: Receiver<String>,
        root: TempDir,
        round: u32,
    }

    impl Fixture {
        /// Watches `files` (name, path under the root) and the sentinel's file.
        fn start(root: TempDir, files: &[(&str, &str)]) -> Fixture {
            let sentinel = root.path().join("sentinel/plugin.wasm");
            fs::create_dir_all(sentinel.parent().unwrap()).unwrap();
            fs::write(&sentinel, "sentinel 0").unwrap();
            let (tell, fired) = mpsc::channel();
            let on_change = move |name: &str, _: &Path, _: &str| tell.send(name.to_owned()).unwrap();
            let watcher = Watcher::start(listed(&root, files), bytes(), None, on_change).unwrap();
            Fixture { watcher, fired, root, round: 0 }
        }

        fn path(&self, relative: &str) -> PathBuf {
            self.root.path().join(relative)
        }

        /// Watch `files` and the sentinel's file instead.
        fn set(&self, files: &[(&str, &str)]) {
            self.watcher.set(listed(&self.root, files)).unwrap();
        }

        /// Every call back made for what happened before: changes the sentinel's file
        /// and returns the listeners called back before it, in order. A change before
        /// the sentinel's settles no later than it (the thread takes events in order),
        /// so whatever it made fire is in the list, once per call back.
        fn settled(&mut self) -> Vec<String> {
            self.round += 1;
            replace(&self.path("sentinel/plugin.wasm"), format!("sentinel {}", self.round).as_bytes());
            let deadline = Instant::now() + PATIENCE;
            let mut fired = Vec::new();
            loop {
                let left = deadline.saturating_duration_since(Instant::now());
                match self.fired.recv_timeout(left) {
                    Ok(listener) if listener == SENTINEL => return fired,
                    Ok(listener) => fired.push(listener),
                    Err(err) => {
                        panic!("no call back for the sentinel within {PATIENCE:?} ({err}); before it: {fired:?}")
                    }
                }
            }
        }
    }

    /// The fingerprint the tests watch with: the bytes themselves.
    fn bytes() -> Fingerprint {
        Arc::new(|path| {
            fs::read(path).ok().filter(|bytes| !bytes.is_empty()).map(|b| String::from_utf8_lossy(&b).into())
        })
    }

    fn listed(root: &TempDir, files: &[(&str, &str)]) -> Vec<(String, PathBuf)> {
        let mut listed: Vec<(String, PathBuf)> =
            files.iter().map(|(listener, path)| (listener.to_string(), root.path().join(path))).collect();
        listed.push((SENTINEL.into(), root.path().join("sentinel/plugin.wasm")));
        listed
    }

    /// Writes a file as an editor does: a new file, renamed over the old one.
    fn replace(path: &Path, content: &[u8]) {
        let temporary = path.with_extension("swp");
        fs::write(&temporary, content).unwrap();
        fs::rename(&temporary, path).unwrap();
    }

    /// Makes a symlink at `link` to `target` atomically, as `ln -sfn` over a
    /// temporary name and a rename do.
    fn relink(target: &str, link: &Path) {
        let temporary = link.with_extension("tmp");
        symlink(target, &temporary).unwrap();
        fs::rename(&temporary, link).unwrap();
    }

    fn root_with(files: &[(&str, &str)]) -> TempDir {
        let root = tempfile::tempdir().unwrap();
        for (path, content) in files {
            let path = root.path().join(path);
            fs::create_dir_all(path.parent().unwrap()).unwrap();
            fs::write(path, content).unwrap();
        }
        root
    }

    #[test]
    fn an_editors_rename_over_the_file_fires_once() {
        let mut fx = Fixture::start(root_with(&[("a.wasm", "one")]), &[("a", "a.wasm")]);
        replace(&fx.path("a.wasm"), b"two");
        assert_eq!(fx.settled(), ["a"]);
        // An editor that keeps a backup: the old file moved aside, a new one
        // written in its place, the backup removed.
        fs::rename(fx.path("a.wasm"), fx.path("a.wasm~")).unwrap();
        fs::write(fx.path("a.wasm"), "three").unwrap();
        fs::remove_file(fx.path("a.wasm~")).unwrap();
        assert_eq!(fx.settled(), ["a"]);
    }

    #[test]
    fn a_copy_over_the_file_fires_once_it_is_complete() {
        let mut fx = Fixture::start(root_with(&[("a.wasm", "one"), ("new.wasm", "two, copied")]), &[("a", "a.wasm")]);
        fs::copy(fx.path("new.wasm"), fx.path("a.wasm")).unwrap();
        assert_eq!(fx.settled(), ["a"]);

        // A writer that truncates the file and writes half of it, then waits: the
        // sentinel settles meanwhile, and nothing fires for the half.
        let mut writer = OpenOptions::new().write(true).truncate(true).open(fx.path("a.wasm")).unwrap();
        writer.write_all(b"three, first half").unwrap();
        writer.flush().unwrap();
        assert_eq!(fx.settled(), Vec::<String>::new(), "fired on a file still being written");
        writer.write_all(b" and second half").unwrap();
        drop(writer);
        assert_eq!(fx.settled(), ["a"]);

        // Truncated and not yet written: empty is not a new version.
        let writer = File::create(fx.path("a.wasm")).unwrap();
        drop(writer);
        assert_eq!(fx.settled(), Vec::<String>::new(), "fired on an empty file");
        fs::write(fx.path("a.wasm"), "four").unwrap();
        assert_eq!(fx.settled(), ["a"]);
    }

    /// Lays out a ConfigMap volume: `plugin.wasm -> ..data/plugin.wasm` and
    /// `..data -> ..2026_01_a`.
    fn config_map() -> TempDir {
        let root = root_with(&[("config/..2026_01_a/plugin.wasm", "one")]);
        symlink("..2026_01_a", root.path().join("config/..data")).unwrap();
        symlink("..data/plugin.wasm", root.path().join("config/plugin.wasm")).unwrap();
        root
    }

    /// Updates the ConfigMap volume as the kubelet does: a new timestamped directory,
    /// `..data_tmp` pointing to it renamed over `..data`, the old directory removed.
    fn update_config_map(fx: &Fixture, old: &str, new: &str, content: &str) {
        let dir = fx.path("config").join(new);
        fs::create_dir(&dir).unwrap();
        fs::write(dir.join("plugin.wasm"), content).unwrap();
        symlink(new, fx.path("config/..data_tmp")).unwrap();
        fs::rename(fx.path("config/..data_tmp"), fx.path("config/..data")).unwrap();
        fs::remove_dir_all(fx.path("config").join(old)).unwrap();
    }

    #[test]
    fn a_config_maps_symlink_flip_fires_once_per_new_content() {
        let mut fx = Fixture::start(config_map(), &[("a", "config/plugin.wasm")]);
        update_config_map(&fx, "..2026_01_a", "..2026_01_b", "two");
        assert_eq!(fx.settled(), ["a"]);
        // Another key of the map changed: a flip to the same plugin bytes.
        update_config_map(&fx, "..2026_01_b", "..2026_01_c", "two");
        assert_eq!(fx.settled(), Vec::<String>::new(), "fired on a flip to the same content");
        // The watch moved along with the flips.
        update_config_map(&fx, "..2026_01_c", "..2026_01_d", "three");
        assert_eq!(fx.settled(), ["a"]);
    }

    #[test]
    fn a_symlink_into_another_directory_is_followed_and_retargeted() {
        let mut fx = Fixture::start(
            root_with(&[("plugins/v1.wasm", "one"), ("plugins/v2.wasm", "two"), ("new.wasm", "one, changed")]),
            &[],
        );
        fs::create_dir(fx.path("live")).unwrap();
        symlink("../plugins/v1.wasm", fx.path("live/a.wasm")).unwrap();
        fx.set(&[("a", "live/a.wasm")]);

        // Written in place where the link points.
        fs::copy(fx.path("new.wasm"), fx.path("plugins/v1.wasm")).unwrap();
        assert_eq!(fx.settled(), ["a"]);
        relink("../plugins/v2.wasm", &fx.path("live/a.wasm"));
        assert_eq!(fx.settled(), ["a"]);
        // The old target is no longer the listener's file; the new one is.
        fs::write(fx.path("plugins/v1.wasm"), "one, changed again").unwrap();
        assert_eq!(fx.settled(), Vec::<String>::new(), "fired for a file the link no longer points to");
        fs::write(fx.path("plugins/v2.wasm"), "two, changed").unwrap();
        assert_eq!(fx.settled(), ["a"]);
    }

    #[test]
    fn a_touch_or_the_same_bytes_again_does_not_fire() {
        let mut fx = Fixture::start(root_with(&[("a.wasm", "one")]), &[("a", "a.wasm")]);
        File::options().write(true).open(fx.path("a.wasm")).unwrap().set_modified(SystemTime::now()).unwrap();
        assert_eq!(fx.settled(), Vec::<String>::new(), "fired on a touch");
        fs::write(fx.path("a.wasm"), "one").unwrap();
        assert_eq!(fx.settled(), Vec::<String>::new(), "fired on a rewrite of the same bytes");
        replace(&fx.path("a.wasm"), b"one");
        assert_eq!(fx.settled(), Vec::<String>::new(), "fired on a rename of the same bytes over it");
        fs::write(fx.path("a.wasm"), "two").unwrap();
        assert_eq!(fx.settled(), ["a"]);
    }

    #[test]
    fn a_file_that_disappears_fires_when_it_comes_back_different() {
        let mut fx = Fixture::start(root_with(&[("a.wasm", "one")]), &[("a", "a.wasm")]);
        fs::remove_file(fx.path("a.wasm")).unwrap();
        assert_eq!(fx.settled(), Vec::<String>::new(), "fired on a removal");
        fs::write(fx.path("a.wasm"), "one").unwrap();
        assert_eq!(fx.settled(), Vec::<String>::new(), "fired on the same content coming back");
        fs::remove_file(fx.path("a.wasm")).unwrap();
        assert_eq!(fx.settled(), Vec::<String>::new(), "fired on a removal");
        fs::write(fx.path("a.wasm"), "two").unwrap();
        assert_eq!(fx.settled(), ["a"]);
    }

    #[test]
    fn a_file_whose_directory_is_missing_at_first_fires_when_it_appears() {
        let mut fx = Fixture::start(root_with(&[]), &[("a", "later/a.wasm")]);
        fs::create_dir(fx.path("later")).unwrap();
        assert_eq!(fx.settled(), Vec::<String>::new());
        fs::write(fx.path("later/a.wasm"), "one").unwrap();
        assert_eq!(fx.settled(), ["a"]);
    }

    #[test]
    fn set_replaces_the_watched_files() {
        let mut fx =
            Fixture::start(root_with(&[("x.wasm", "x"), ("y/y.wasm", "y"), ("z.wasm", "z")]), &[("a", "x.wasm")]);
        fx.set(&[("a", "y/y.wasm"), ("c", "z.wasm"), ("d", "z.wasm")]);
        fs::write(fx.path("x.wasm"), "x, changed").unwrap();
        assert_eq!(fx.settled(), Vec::<String>::new(), "fired for a file no longer watched");
        fs::write(fx.path("y/y.wasm"), "y, changed").unwrap();
        assert_eq!(fx.settled(), ["a"]);
        replace(&fx.path("z.wasm"), b"z, changed");
        assert_eq!(fx.settled(), ["c", "d"], "every listener of a file fires, in order");
        // A listener that keeps its file keeps the content last seen: a change made
        // just before the set still fires.
        fs::write(fx.path("y/y.wasm"), "y, changed again").unwrap();
        fx.set(&[("a", "y/y.wasm")]);
        assert_eq!(fx.settled(), ["a"]);
    }

    #[test]
    fn a_change_made_before_the_baseline_was_known_fires_against_it() {
        let root = root_with(&[("a.wasm", "new"), ("b.wasm", "same"), ("sentinel/plugin.wasm", "sentinel 0")]);
        let known = vec![("a".to_owned(), "old".to_owned()), ("b".to_owned(), "same".to_owned())];
        // Unknown for the first few asks (a server still starting).
        let mut asked = 0;
        let baseline: Baseline = Box::new(move || {
            asked += 1;
            (asked > 3).then(|| known.clone())
        });
        let (tell, fired) = mpsc::channel();
        let on_change = move |name: &str, _: &Path, _: &str| tell.send(name.to_owned()).unwrap();
        let files = listed(&root, &[("a", "a.wasm"), ("b", "b.wasm")]);
        let _watcher = Watcher::start(files, bytes(), Some(baseline), on_change).unwrap();
        assert_eq!(fired.recv_timeout(PATIENCE), Ok("a".to_owned()), "the file differs from the baseline");
        replace(&root.path().join("sentinel/plugin.wasm"), b"sentinel 1");
        assert_eq!(fired.recv_timeout(PATIENCE), Ok(SENTINEL.to_owned()), "`b` holds its baseline");
    }

    #[test]
    fn a_watcher_can_be_shared_with_another_thread() {
        fn shareable<T: Send + Sync>() {}
        shareable::<Watcher>();
    }

    #[test]
    fn dropping_the_watcher_stops_its_thread() {
        let fx = Fixture::start(root_with(&[("a.wasm", "one")]), &[("a", "a.wasm")]);
        let Fixture { watcher, fired, .. } = fx;
        drop(watcher);
        // The thread owned the call back, and with it the only sender.
        assert_eq!(fired.recv_timeout(PATIENCE), Err(RecvTimeoutError::Disconnected));
    }
}
