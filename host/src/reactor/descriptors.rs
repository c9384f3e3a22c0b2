//! Open file descriptors: how many the process may hold, and a spare one for when
//! they run out.
//!
//! Every connection is a descriptor, so the process's `RLIMIT_NOFILE` caps what the
//! listeners' `max-connections` can really reach. [`raise_limit`] lifts the soft limit
//! to the hard one at start (a systemd service starts at 1024 soft). When accept still
//! fails for want of a descriptor, the waiting connection would sit in the backlog,
//! unanswered; a [`Reserve`] holds one descriptor back so the reactor can free it,
//! accept that connection, close it at once (the peer is told), and take the spare
//! back. This module never touches sockets and changes no limit but the soft
//! `RLIMIT_NOFILE`.

use std::fs::File;
use std::io;

use nix::sys::resource::{Resource, getrlimit, setrlimit};

/// Raise the soft limit on open descriptors to the hard limit; returns the soft limit
/// now in effect.
pub fn raise_limit() -> io::Result<u64> {
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE)?;
    if soft < hard {
        setrlimit(Resource::RLIMIT_NOFILE, hard, hard)?;
    }
    Ok(getrlimit(Resource::RLIMIT_NOFILE)?.0)
}

/// Whether an error says that the process (EMFILE) or the system (ENFILE) is out of
/// descriptors.
pub fn exhausted(err: &io::Error) -> bool {
    let code = err.raw_os_error().map(nix::errno::Errno::from_raw);
    matches!(code, Some(nix::errno::Errno::EMFILE | nix::errno::Errno::ENFILE))
}

/// One descriptor kept open (on `/dev/null`) to be given up when there are no others.
#[derive(Debug)]
pub(crate) struct Reserve {
    spare: Option<File>,
}

impl Reserve {
    /// Take the spare descriptor now, if one can be had.
    pub fn new() -> Reserve {
        let mut reserve = Reserve { spare: None };
        reserve.restore();
        reserve
    }

    /// Give the spare descriptor up; false if none was held.
    pub fn release(&mut self) -> bool {
        self.spare.take().is_some()
    }

    /// Take a spare descriptor again if none is held; false if none can be had.
    pub fn restore(&mut self) -> bool {
        if self.spare.is_none() {
            self.spare = File::open("/dev/null").ok();
        }
        self.spare.is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_soft_limit_ends_at_the_hard_one() {
        let limit = raise_limit().unwrap();
        assert_eq!(getrlimit(Resource::RLIMIT_NOFILE).unwrap(), (limit, limit));
    }

    #[test]
    fn a_released_spare_can_be_taken_back() {
        let mut reserve = Reserve::new();
        assert!(reserve.release());
        assert!(!reserve.release());
        assert!(reserve.restore());
        assert!(reserve.release());
    }

    #[test]
    fn exhaustion_is_emfile_or_enfile() {
        assert!(exhausted(&io::Error::from_raw_os_error(nix::libc::EMFILE)));
        assert!(exhausted(&io::Error::from_raw_os_error(nix::libc::ENFILE)));
        assert!(!exhausted(&io::Error::from_raw_os_error(nix::libc::ECONNABORTED)));
        assert!(!exhausted(&io::Error::other("no code")));
    }
}
