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
    /// A limit of the listener would be exceeded (send buffer, timers, connections).
    LimitExceeded,
    /// The listener's configuration does not allow this.
    NotAllowed,
    /// An argument is out of range; the text says which.
    Invalid(String),
    /// The network said no: an outbound connection was refused, unreachable, or reset
    /// before it was established. The text is the system's reason.
    Failed(String),
}

impl Error {
    /// The WIT name of the case: `closed`, `limit-exceeded`, `not-allowed`, `invalid` or
    /// `failed`.
    ///
    /// Stable and free of the `invalid` and `failed` texts, so it suits wire protocols
    /// and log keys.
    ///
    /// ```
    /// use sandport_guest::Error;
    ///
    /// assert_eq!(Error::LimitExceeded.code(), "limit-exceeded");
    /// assert_eq!(Error::Invalid("n too large".into()).code(), "invalid");
    /// assert_eq!(Error::Failed("connection refused".into()).code(), "failed");
    /// ```
    pub fn code(&self) -> &'static str {
        match self {
            Error::Closed => "closed",
            Error::LimitExceeded => "limit-exceeded",
            Error::NotAllowed => "not-allowed",
            Error::Invalid(_) => "invalid",
            Error::Failed(_) => "failed",
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
            Error::Failed(why) => write!(f, "network failure: {why}"),
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
            WitError::Failed(why) => Error::Failed(why),
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
        assert_eq!(Error::Failed("x".into()).code(), "failed");
    }

    #[test]
    fn converts_from_the_generated_type() {
        assert_eq!(Error::from(WitError::Invalid("n".into())), Error::Invalid("n".into()));
        assert_eq!(Error::from(WitError::Closed), Error::Closed);
        assert_eq!(Error::Invalid("timer id".into()).to_string(), "invalid argument: timer id");
        assert_eq!(Error::from(WitError::Failed("refused".into())), Error::Failed("refused".into()));
        assert_eq!(Error::Failed("connection refused".into()).to_string(), "network failure: connection refused");
    }
}
