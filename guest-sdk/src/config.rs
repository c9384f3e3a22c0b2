//! The listener's configuration values, from its `[listener.config]` table.
//!
//! The host hands values out as text (strings as they are, numbers and booleans as
//! written), whenever a handler asks: there is no init step, so read a value in the
//! event that needs it.
//!
//! ```no_run
//! use sandport_guest::config;
//!
//! let greeting = config::get("greeting").unwrap_or_else(|| "hello".to_owned());
//! let max_users: usize = config::parse("max-users").ok().flatten().unwrap_or(100);
//! ```

use std::fmt;
use std::str::FromStr;

use crate::bindings::sandport::handler::host;

/// The value of `key`, or `None` if the listener's configuration does not set it.
///
/// ```no_run
/// match sandport_guest::config::get("upstream") {
///     Some(address) => sandport_guest::log::info(&format!("forwarding to {address}")),
///     None => sandport_guest::log::error("no `upstream` configured"),
/// }
/// ```
pub fn get(key: &str) -> Option<String> {
    host::config(key)
}

/// The value of `key` parsed as a `T`: `Ok(None)` if it is not set, [`BadValue`] if
/// it does not parse.
///
/// ```no_run
/// use std::time::Duration;
/// use sandport_guest::config;
///
/// let idle = match config::parse::<u64>("idle-ms") {
///     Ok(ms) => Duration::from_millis(ms.unwrap_or(10_000)),
///     Err(e) => {
///         sandport_guest::log::error(&e.to_string());
///         Duration::from_millis(10_000)
///     }
/// };
/// ```
pub fn parse<T>(key: &str) -> Result<Option<T>, BadValue>
where
    T: FromStr,
    T::Err: fmt::Display,
{
    parse_value(key, get(key))
}

/// The host-free part of [`parse`], so it can be tested natively.
fn parse_value<T>(key: &str, value: Option<String>) -> Result<Option<T>, BadValue>
where
    T: FromStr,
    T::Err: fmt::Display,
{
    let Some(value) = value else { return Ok(None) };
    match value.parse() {
        Ok(parsed) => Ok(Some(parsed)),
        Err(e) => Err(BadValue { key: key.to_owned(), reason: e.to_string(), value }),
    }
}

/// A configuration value that [`parse`] could not read as the type asked for.
///
/// Its `Display` names the key, the value and the reason, ready for the log:
///
/// ```
/// use sandport_guest::config::BadValue;
///
/// let e = BadValue { key: "port".into(), value: "http".into(), reason: "invalid digit found in string".into() };
/// assert_eq!(e.to_string(), "config `port` = \"http\": invalid digit found in string");
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BadValue {
    /// The key asked for.
    pub key: String,
    /// Its value, as the host gave it.
    pub value: String,
    /// Why it did not parse, from the type's `FromStr` error.
    pub reason: String,
}

impl fmt::Display for BadValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "config `{}` = {:?}: {}", self.key, self.value, self.reason)
    }
}

impl std::error::Error for BadValue {}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use super::*;

    #[test]
    fn parses_a_set_value_and_passes_over_a_missing_one() {
        assert_eq!(parse_value::<u32>("n", Some("42".into())), Ok(Some(42)));
        assert_eq!(parse_value::<u32>("n", None), Ok(None));
        let addr: Option<SocketAddr> = parse_value("upstream", Some("[::1]:80".into())).unwrap();
        assert_eq!(addr.unwrap().port(), 80);
    }

    #[test]
    fn a_bad_value_names_key_value_and_reason() {
        let e = parse_value::<bool>("verbose", Some("yes".into())).unwrap_err();
        assert_eq!((e.key.as_str(), e.value.as_str()), ("verbose", "yes"));
        assert_eq!(e.to_string(), "config `verbose` = \"yes\": provided string was not `true` or `false`");
    }
}
