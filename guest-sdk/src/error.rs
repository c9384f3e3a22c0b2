//! The error a host call can return, as a Rust type.

use std::fmt;

use crate::bindings::sandport::handler::types::Error as WitError;

/// Why the host refused a call. A refused call changes nothing.
///
/// Mirrors the WIT `error` variant of `sandport:handler/types`; it exists so plugins get
/// `Display`, `std::error::Error` and `PartialEq` without depending on generated code.
///
/// ```no_run
/// use sandport_guest::{Conn, Error};
///
/// fn greet(conn: Conn) {
///     match conn.send(b"hello\n") {
///         Ok(_room) => {}
///         // The send buffer is full: try again on the next `send` event.
///         Err(Error::LimitExceeded) => {}
///         Err(e) => sandport_guest::log::warn(&format!("{conn}: {e}")),
///     }
/// }
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Error {
    /// The connection is closed, closing, or was never this plugin's.
    Closed,
    /// A limit of the listener would be exceeded (send buffer, timers).
    LimitExceeded,
    /// The listener's configuration does not allow this.
    NotAllowed,
    /// An argument is out of range; the text says which.
    Invalid(String),
}

impl Error {
    /// The WIT name of the case: `closed`, `limit-exceeded`, `not-allowed` or `invalid`.
    ///
    /// Stable and free of the `invalid` text, so it suits wire protocols and log keys.
    ///
    /// ```
    /// use sandport_guest::Error;
    ///
    /// assert_eq!(Error::LimitExceeded.code(), "limit-exceeded");
    /// assert_eq!(Error::Invalid("n too large".into()).code(), "invalid");
    /// ```
    pub fn code(&self) -> &'static str {
        match self {
            Error::Closed => "closed",
            Error::LimitExceeded => "limit-exceeded",
            Error::NotAllowed => "not-allowed",
            Error::Invalid(_) => "invalid",
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Closed => f.write_str("connection closed"),
            Error::LimitExceeded => f.write_str("listener limit exceeded"),
            Error::NotAllowed => f.write_str("not allowed by the listener's configuration"),
            Error::Invalid(why) => write!(f, "invalid argument: {why}"),
        }
    }
}

impl std::error::Error for Error {}

impl From<WitError> for Error {
    fn from(e: WitError) -> Self {
        match e {
            WitError::Closed => Error::Closed,
            WitError::LimitExceeded => Error::LimitExceeded,
            WitError::NotAllowed => Error::NotAllowed,
            WitError::Invalid(why) => Error::Invalid(why),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_match_the_wit_names() {
        assert_eq!(Error::Closed.code(), "closed");
        assert_eq!(Error::LimitExceeded.code(), "limit-exceeded");
        assert_eq!(Error::NotAllowed.code(), "not-allowed");
        assert_eq!(Error::Invalid("x".into()).code(), "invalid");
    }

    #[test]
    fn converts_from_the_generated_type() {
        assert_eq!(Error::from(WitError::Invalid("n".into())), Error::Invalid("n".into()));
        assert_eq!(Error::from(WitError::Closed), Error::Closed);
        assert_eq!(Error::Invalid("timer id".into()).to_string(), "invalid argument: timer id");
    }
}
