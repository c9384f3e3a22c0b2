//! Whether a file or directory may hold native code this server runs: the rule the
//! compiled-component cache (`cache`) applies before it reads or writes anything.
//!
//! A cache entry's header proves only that the entry is whole, not who wrote it, and
//! what it holds runs as the server's user. So, as OpenSSH refuses a key file others
//! can write, only what this server's effective user (or root) owns and no group or
//! other user can write is trusted ([`judge`]). This module reads no file and decides
//! nothing about what to do instead.

use std::collections::BTreeSet;
use std::fs::Metadata;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};

/// Why a cache directory or entry is not trusted with native code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Distrust {
    /// Owned by another user than the server's, who could write code into it.
    #[error("owned by uid {owner}, not by this server's user (uid {euid}) or root")]
    Owner {
        /// Its owner.
        owner: u32,
        /// The server's effective uid.
        euid: u32,
    },
    /// Writable by group or others.
    #[error("writable by group or others (mode {mode:03o})")]
    Writable {
        /// Its permission bits.
        mode: u32,
    },
}

impl Distrust {
    /// What the operator does about it, for `path`.
    pub fn fix(self, path: &Path) -> String {
        match self {
            Distrust::Owner { euid, .. } => format!("chown {euid} {}", path.display()),
            Distrust::Writable { .. } => format!("chmod go-w {}", path.display()),
        }
    }
}

/// Whether what `metadata` describes may hold (or be) native code this server runs:
/// owned by the server's effective user or root, and not writable by group or others.
pub fn judge(metadata: &Metadata) -> Result<(), Distrust> {
    let euid = nix::unistd::geteuid().as_raw();
    let (owner, mode) = (metadata.uid(), metadata.mode() & 0o7777);
    if owner != euid && owner != 0 {
        return Err(Distrust::Owner { owner, euid });
    }
    if mode & 0o022 != 0 {
        return Err(Distrust::Writable { mode });
    }
    Ok(())
}

/// Whether `path` is reported already: each untrusted directory or entry is warned
/// about once per process, however many engines and loads meet it.
pub fn first_report(path: &Path) -> bool {
    static REPORTED: Mutex<BTreeSet<PathBuf>> = Mutex::new(BTreeSet::new());
    REPORTED.lock().unwrap_or_else(PoisonError::into_inner).insert(path.to_owned())
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    #[test]
    fn only_what_no_one_else_can_write_is_trusted() {
        let dir = tempfile::tempdir().unwrap();
        let judged = |mode: u32| {
            std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(mode)).unwrap();
            judge(&std::fs::metadata(dir.path()).unwrap())
        };
        assert_eq!(judged(0o700), Ok(()));
        assert_eq!(judged(0o755), Ok(()));
        assert_eq!(judged(0o775), Err(Distrust::Writable { mode: 0o775 }));
        assert_eq!(judged(0o1777), Err(Distrust::Writable { mode: 0o1777 }), "sticky or not");
        let fix = Distrust::Writable { mode: 0o777 }.fix(dir.path());
        assert_eq!(fix, format!("chmod go-w {}", dir.path().display()));
    }
}
