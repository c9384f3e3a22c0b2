//! Plugins that come from an OCI registry: the pull that gives such a listener its
//! component file (at start, with retries and, where the listener allows, the version
//! pulled last), and the follower that looks at its tag and hands each new digest to
//! the swap pipeline.
//!
//! A pull runs on the thread of the listener it is for (a start's own preparing
//! thread, or the listener's follower), never on an event loop, so a slow or dead
//! registry delays only its own listener. This module never swaps but through
//! [`Control::swap`]: a pulled version is compiled, checked, pre-flighted and rolled
//! back on a fault surge like any other.

use std::collections::HashMap;
use std::path::Path;
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender, channel};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use tracing::{info, warn};

use super::reload::AddError;
use super::{Control, Source};
use crate::config::OciConfig;
use crate::listener::{Artifact, ListenerSpec, Offline};
use crate::oci::{self, OciError, Pulled};

/// The first wait before a failed pull is tried again; each failure doubles it.
const FIRST_RETRY: Duration = Duration::from_millis(500);

/// The longest wait between two tries.
const LAST_RETRY: Duration = Duration::from_secs(30);

/// A server's registry client and what it knows of each pulled listener.
pub(crate) struct Artifacts {
    client: oci::Client,
    start_timeout: Duration,
    tracks: Mutex<HashMap<String, Track>>,
}

/// What is known of one listener's artifact.
#[derive(Default)]
struct Track {
    /// Manifest digests by the content hash of the component they carried, to tell
    /// which digest a version is.
    digests: HashMap<String, String>,
    /// The digest last handed to the swap pipeline (or served at start): a tag that
    /// still points at it is not taken again, whatever became of it.
    taken: Option<Taken>,
    /// The last pull or look that failed, and why.
    last_error: Option<String>,
    /// When the registry last answered.
    checked: Option<SystemTime>,
    pulls: u64,
    failed_pulls: u64,
    /// Dropped to stop the listener's follower.
    follower: Option<Sender<()>>,
}

/// A digest handed to the swap pipeline, and what became of it there.
struct Taken {
    digest: String,
    /// Why the pipeline refused it, if it did.
    refused: Option<String>,
    /// The listener's rollbacks when it was taken: one more, and it was rolled back.
    rollbacks: u64,
}

/// How long a pull may keep trying a registry that fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Patience {
    /// At start: with backoff, for `start-timeout-ms`.
    Start,
    /// A reload adding a listener: once, so that other listeners' changes wait for no
    /// registry.
    Once,
}

/// A listener's artifact as `/listeners` and the metrics show it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArtifactStatus {
    /// The reference, `oci://...`.
    pub reference: String,
    /// The manifest digest of the version serving; `None` if it did not come from the
    /// registry (a swap through the admin API, say).
    pub digest: Option<String>,
    /// The digest the tag points at that was refused or rolled back, and is not taken
    /// again until the tag moves on.
    pub refused: Option<String>,
    /// Why it was refused ("rolled back" when it faulted after taking over).
    pub refused_why: Option<String>,
    /// The last failure to reach the registry or to pull, if the registry has not
    /// answered since.
    pub last_error: Option<String>,
    /// When the registry last answered.
    pub checked: Option<SystemTime>,
    /// Pulls and looks at the tag that succeeded.
    pub pulls: u64,
    /// Those that failed.
    pub failed_pulls: u64,
}

impl Artifacts {
    /// The client of `config`'s `[oci]` table.
    pub(crate) fn new(config: &OciConfig) -> Result<Artifacts, OciError> {
        Ok(Artifacts {
            client: oci::Client::new(config.settings.clone())?,
            start_timeout: config.start_timeout,
            tracks: Mutex::new(HashMap::new()),
        })
    }

    fn tracks(&self) -> MutexGuard<'_, HashMap<String, Track>> {
        self.tracks.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Note that the registry answered a pull or a look at `listener`'s tag, and which
    /// manifest digest the component `pulled` (if any) came in.
    fn answered(&self, listener: &str, pulled: Option<&Pulled>) {
        let mut tracks = self.tracks();
        let track = tracks.entry(listener.to_owned()).or_default();
        if let Some(pulled) = pulled {
            track.digests.insert(pulled.layer.trim_start_matches("sha256:").to_owned(), pulled.digest.clone());
        }
        track.pulls += 1;
        track.last_error = None;
        track.checked = Some(SystemTime::now());
    }

    /// Note a failed pull or look.
    fn failed(&self, listener: &str, err: &OciError) {
        let mut tracks = self.tracks();
        let track = tracks.entry(listener.to_owned()).or_default();
        track.failed_pulls += 1;
        track.last_error = Some(err.to_string());
    }

    /// What `/listeners` shows of `listener`'s artifact, `hash` being the content hash
    /// of the version serving and `rollbacks` the listener's rollbacks so far.
    pub(crate) fn status(&self, listener: &str, artifact: &Artifact, hash: &str, rollbacks: u64) -> ArtifactStatus {
        let tracks = self.tracks();
        let track = tracks.get(listener);
        let digest = track.and_then(|t| t.digests.get(hash).cloned());
        let taken = track.and_then(|t| t.taken.as_ref()).filter(|taken| digest.as_ref() != Some(&taken.digest));
        let why = taken.and_then(|taken| match &taken.refused {
            Some(why) => Some(why.clone()),
            None => (rollbacks > taken.rollbacks).then(|| "rolled back: it faulted after it took over".to_owned()),
        });
        let refused = taken.filter(|_| why.is_some()).map(|taken| taken.digest.clone());
        ArtifactStatus {
            reference: artifact.reference.to_string(),
            digest,
            refused,
            refused_why: why,
            last_error: track.and_then(|t| t.last_error.clone()),
            checked: track.and_then(|t| t.checked),
            pulls: track.map_or(0, |t| t.pulls),
            failed_pulls: track.map_or(0, |t| t.failed_pulls),
        }
    }

    /// Stop `listener`'s follower, if it has one, and forget it.
    pub(crate) fn forget(&self, listener: &str) {
        self.tracks().remove(listener);
    }

    /// Stop every follower: the server is stopping.
    pub(crate) fn stop_following(&self) {
        self.tracks().values_mut().for_each(|track| track.follower = None);
    }
}

impl Control {
    /// `spec` with its plugin file, pulled first if it comes from a registry. A start
    /// retries a failing registry with backoff for `start-timeout-ms`; a listener with
    /// `offline = "last-pulled"` serves the version pulled last instead, at once, with
    /// a warning, and its follower goes on trying.
    pub(super) fn fetch(&self, spec: &ListenerSpec, patience: Patience) -> Result<ListenerSpec, AddError> {
        let (Some(artifact), Some(artifacts)) = (&spec.artifact, &self.inner.artifacts) else {
            return Ok(spec.clone());
        };
        let name = &spec.name;
        let reference = &artifact.reference;
        let deadline = Instant::now() + artifacts.start_timeout;
        let mut wait = FIRST_RETRY;
        loop {
            let err = match artifacts.client.pull(reference) {
                Ok(pulled) => {
                    artifacts.answered(name, Some(&pulled));
                    info!(listener = %name, reference = %reference, digest = %pulled.digest, "plugin pulled");
                    return Ok(with_plugin(spec, &pulled));
                }
                Err(err) => err,
            };
            artifacts.failed(name, &err);
            if artifact.offline == Offline::LastPulled
                && let Some(stored) = artifacts.client.store().last_pulled(reference)
            {
                artifacts.answered(name, Some(&stored));
                warn!(
                    listener = %name,
                    reference = %reference,
                    digest = %stored.digest,
                    "cannot pull the plugin, serving the version pulled last: {err}"
                );
                return Ok(with_plugin(spec, &stored));
            }
            if patience == Patience::Once || Instant::now() + wait > deadline {
                return Err(AddError::Pull(err));
            }
            warn!(listener = %name, reference = %reference, "cannot pull the plugin, trying again in {wait:?}: {err}");
            std::thread::sleep(wait);
            wait = (wait * 2).min(LAST_RETRY);
        }
    }

    /// `spec`, re-read by a reload, with the file of the version its listener serves if
    /// its artifact did not change (the follower takes a moved tag), else
    /// [fetched](Self::fetch) anew, once: a reload does not wait for a registry.
    pub(super) fn refetch(
        &self,
        spec: &ListenerSpec,
        old: &ListenerSpec,
        serving: &Path,
    ) -> Result<ListenerSpec, AddError> {
        match &spec.artifact {
            Some(artifact) if old.artifact.as_ref().map(|a| &a.reference) == Some(&artifact.reference) => {
                Ok(ListenerSpec { plugin: serving.to_owned(), ..spec.clone() })
            }
            _ => self.fetch(spec, Patience::Once),
        }
    }

    /// Start following `spec`'s tag if it asks to (`follow-ms`), or if it serves a
    /// stored version because its registry failed at start; a follower already running
    /// for it stops first.
    pub(super) fn track(&self, spec: &ListenerSpec) {
        let (Some(artifact), Some(artifacts)) = (&spec.artifact, &self.inner.artifacts) else { return };
        let (stop, stopped) = channel();
        // Looked up before the tracks are locked: the status locks the records first.
        let (hash, rollbacks) =
            self.with_record(&spec.name, |r| (r.current().hash.clone(), r.rollbacks)).unwrap_or_default();
        let behind = {
            let mut tracks = artifacts.tracks();
            let track = tracks.entry(spec.name.clone()).or_default();
            if let Some(digest) = track.digests.get(&hash) {
                track.taken = Some(Taken { digest: digest.clone(), refused: None, rollbacks });
            }
            track.follower = None;
            let behind = track.last_error.is_some();
            if artifact.follow.is_some() || behind {
                track.follower = Some(stop);
            }
            behind
        };
        if artifact.follow.is_none() && !behind {
            return;
        }
        let control = self.clone();
        let (name, artifact) = (spec.name.clone(), artifact.clone());
        let spawned = std::thread::Builder::new()
            .name(format!("sandport-follow-{name}"))
            .spawn(move || control.follow_tag(&name, &artifact, &stopped));
        if let Err(err) = spawned {
            warn!(listener = %spec.name, "cannot start the thread that follows the plugin's tag: {err}");
        }
    }

    /// The follower of `name`'s tag: look at it every `follow-ms` (or sooner, with
    /// backoff, while the registry fails), and swap in a digest that is new and not one
    /// taken before. Without `follow-ms` it ends once the registry has answered.
    fn follow_tag(&self, name: &str, artifact: &Artifact, stopped: &Receiver<()>) {
        let Some(artifacts) = &self.inner.artifacts else { return };
        let reference = &artifact.reference;
        let mut failing = artifacts.tracks().get(name).is_some_and(|t| t.last_error.is_some());
        let mut retry = FIRST_RETRY;
        loop {
            let wait = match (failing, artifact.follow) {
                (false, Some(every)) => every,
                (false, None) => return,
                (true, _) => retry,
            };
            if !matches!(stopped.recv_timeout(wait), Err(RecvTimeoutError::Timeout)) {
                return;
            }
            let looked = artifacts.client.resolve(reference).and_then(|digest| {
                let tracks = artifacts.tracks();
                let track = tracks.get(name);
                if track.and_then(|t| t.taken.as_ref()).is_some_and(|taken| taken.digest == digest) {
                    return Ok(None);
                }
                drop(tracks);
                artifacts.client.pull(reference).map(Some)
            });
            let pulled = match looked {
                Ok(pulled) => pulled,
                Err(err) => {
                    artifacts.failed(name, &err);
                    if !failing {
                        warn!(listener = %name, reference = %reference, "cannot look at the plugin's tag: {err}");
                    }
                    failing = true;
                    retry = (retry * 2).min(LAST_RETRY);
                    continue;
                }
            };
            if failing {
                info!(listener = %name, reference = %reference, "the registry answers again");
            }
            (failing, retry) = (false, FIRST_RETRY);
            artifacts.answered(name, pulled.as_ref());
            if let Some(pulled) = pulled {
                self.take(name, &pulled);
            }
        }
    }

    /// Hand the pulled version of `name` to the swap pipeline and remember the digest
    /// taken, whatever the pipeline makes of it.
    fn take(&self, name: &str, pulled: &Pulled) {
        let Some(artifacts) = &self.inner.artifacts else { return };
        let (reference, digest) = (&pulled.reference, &pulled.digest);
        info!(listener = %name, reference = %reference, digest = %digest, "the tag moved: swapping its new digest in");
        let report = self.swap(name, Source::File(pulled.path.clone()));
        let why = match &report {
            Ok(report) if report.took_over => None,
            Ok(report) => Some(report.refused.clone().unwrap_or_else(|| "refused".into())),
            Err(err) => Some(err.to_string()),
        };
        // Recorded before it is logged: whoever reads the log line and then asks
        // `/listeners` finds the same there.
        let rollbacks = self.with_record(name, |r| r.rollbacks).unwrap_or_default();
        artifacts.tracks().entry(name.to_owned()).or_default().taken =
            Some(Taken { digest: digest.clone(), refused: why.clone(), rollbacks });
        match (&report, &why) {
            (Ok(report), None) => info!(
                listener = %name,
                reference = %reference,
                digest = %digest,
                version = report.serving.number,
                migrated = report.migrated,
                draining = report.draining,
                "the tag's new digest took over"
            ),
            (_, why) => warn!(
                listener = %name,
                reference = %reference,
                digest = %digest,
                "the tag's new digest is refused, and not taken again until the tag moves: {}",
                why.as_deref().unwrap_or("refused")
            ),
        }
    }
}

/// `spec` with the pulled component as its plugin file.
fn with_plugin(spec: &ListenerSpec, pulled: &Pulled) -> ListenerSpec {
    ListenerSpec { plugin: pulled.path.clone(), ..spec.clone() }
}
