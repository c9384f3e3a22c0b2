//! The third swap trigger, beside SIGHUP ([`Control::reload`]) and the admin API
//! ([`Control::swap`]): a listener's plugin file that changed on disk.
//!
//! What a change means lives here: the [`Watcher`] only says that a file's content
//! settled into something new, as told by the plugin module's content hash (the same
//! hash a version is known by, a `.cwasm` included, so a file rewritten with what is
//! already served is no change). This module never reads a file but through the
//! plugin module, and never swaps but through [`Control::swap`].

use std::path::{Path, PathBuf};
use std::sync::Arc;

use tracing::{info, warn};

use super::{Control, Source};
use crate::config::Config;
use crate::listener::Tls;
use crate::plugin;
use crate::watch::{Baseline, Fingerprint, WatchError, Watcher};

impl Control {
    /// Swap a listener's plugin whenever its file changes: a [`Watcher`] over `files`
    /// (`(listener, file)`, as [`watched`] lists them) that calls
    /// [`Control::plugin_file_changed`].
    ///
    /// The content compared with is the version each listener serves, learnt once the
    /// server serves: a file changed after the server read it and before this started
    /// watching is swapped in all the same.
    pub fn follow(&self, files: Vec<(String, PathBuf)>) -> Result<Watcher, WatchError> {
        let asked = self.clone();
        let baseline: Baseline = Box::new(move || {
            asked.ready().then(|| {
                asked.listeners().into_iter().filter_map(|l| Some((l.name, l.history.last()?.hash.clone()))).collect()
            })
        });
        let fingerprint: Fingerprint = Arc::new(file_hash);
        let control = self.clone();
        Watcher::start(files, fingerprint, Some(baseline), move |listener, file, hash| {
            control.plugin_file_changed(listener, file, hash)
        })
    }

    /// `listener`'s plugin file settled into new content, whose content hash is `hash`:
    /// swap it in unless it is already served (a reload may have taken it), and log
    /// what became of it.
    pub fn plugin_file_changed(&self, listener: &str, file: &Path, hash: &str) {
        let shown = file.display();
        if self.serving(listener).is_some_and(|v| v.hash == hash) {
            return info!(listener = %listener, file = %shown, "plugin file changed: already serving it");
        }
        info!(listener = %listener, file = %shown, "plugin file changed: swapping it in");
        match self.swap(listener, Source::File(file.to_path_buf())) {
            Ok(report) if report.took_over => info!(
                listener = %listener,
                file = %shown,
                version = report.serving.number,
                hash = %report.serving.hash,
                migrated = report.migrated,
                draining = report.draining,
                "plugin file changed: version {} took over",
                report.serving.number
            ),
            Ok(report) => warn!(
                listener = %listener,
                file = %shown,
                version = report.serving.number,
                "plugin file changed: new version refused, version {} keeps serving: {}",
                report.serving.number,
                report.refused.as_deref().unwrap_or("no reason given")
            ),
            Err(err) => warn!(listener = %listener, file = %shown, "plugin file changed: cannot swap it in: {err}"),
        }
    }
}

impl Control {
    /// Reload a listener's certificate whenever its certificate or key file changes:
    /// a [`Watcher`] over `files` (`(listener, file)`, as [`watched_certificates`]
    /// lists them) that calls [`Control::reload_certificate`], which refuses what does
    /// not parse, match or hold valid, and keeps the old certificate serving.
    pub fn follow_certificates(&self, files: Vec<(String, PathBuf)>) -> Result<Watcher, WatchError> {
        let fingerprint: Fingerprint = Arc::new(pem_hash);
        let control = self.clone();
        Watcher::start(files, fingerprint, None, move |listener, file, _| {
            info!(listener = %listener, file = %file.display(), "certificate file changed: reloading");
            let _ = control.reload_certificate(listener);
        })
    }
}

/// The certificate and key files of every listener that ends TLS, watched whatever its
/// `watch` says: certificates are rotated by other programs (cert-manager, a Secret),
/// and a rotation nobody picks up ends in an expired certificate.
pub fn watched_certificates(config: &Config) -> Vec<(String, PathBuf)> {
    let mut files = Vec::new();
    for l in &config.listeners {
        if let Some(Tls::Terminate(t)) = &l.tls {
            files.push((l.name.clone(), t.certificate.clone()));
            files.push((l.name.clone(), t.key.clone()));
        }
    }
    files
}

/// A hash of the PEM file at `path`; `None` if it cannot be read or is empty: what
/// tells one content of a certificate or key file from another, for a [`Watcher`].
pub fn pem_hash(path: &Path) -> Option<String> {
    let bytes = crate::regular_file::read(path, crate::tls::FILE_CAP).ok().filter(|bytes| !bytes.is_empty())?;
    Some(plugin::content_hash(&bytes))
}

/// The files to watch for a configuration: each listener with `watch` on whose plugin
/// is a local file, and that file, in config order (what [`Control::follow`] and [`Watcher::set`] take).
pub fn watched(config: &Config) -> Vec<(String, PathBuf)> {
    // A pulled plugin's file is the store's, and never changes: its tag is followed.
    let files = config.listeners.iter().filter(|l| l.watch && l.artifact.is_none());
    files.map(|l| (l.name.clone(), l.plugin.clone())).collect()
}

/// The content hash of the plugin file at `path`, as its version would be known;
/// `None` if it cannot be read or is empty (a writer has only just truncated it).
fn file_hash(path: &Path) -> Option<String> {
    let bytes = plugin::read_component(path).ok().filter(|bytes| !bytes.is_empty())?;
    Some(plugin::content_hash(&bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_listeners_with_watch_on_are_watched() {
        let root = tempfile::tempdir().unwrap();
        let text = "watch = true\n\
            [[listener]]\nname = \"on\"\naddress = \"127.0.0.1:0\"\nplugin = \"on.wasm\"\n\
            [[listener]]\nname = \"off\"\naddress = \"127.0.0.1:0\"\nplugin = \"off.wasm\"\nwatch = false\n";
        let config = Config::from_toml(text, &root.path().join("sandport.toml")).unwrap();
        assert_eq!(watched(&config), [("on".to_owned(), root.path().join("on.wasm"))]);
    }
}
