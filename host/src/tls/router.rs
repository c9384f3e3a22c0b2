//! Routing by server name on one address: exact names and `*.` wildcards, and a
//! default for a ClientHello without a name or with a name nobody serves.
//!
//! It owns the matching rules only; what a route leads to (a listener, its
//! certificate) is the caller's `T`. A lookup is two hash probes whatever the number
//! of names, and allocates nothing.

use std::collections::HashMap;
use std::fmt;

/// The longest DNS name (RFC 1035), without its trailing dot. A longer server name
/// matches no name; it still gets the default.
const MAX_NAME: usize = 253;

/// Routes a ClientHello's server name to a `T`. Names are matched without regard to
/// ASCII case and to one trailing dot. `*.example.com` matches a name with exactly one
/// label in front of `example.com` (`a.example.com`, not `a.b.example.com` nor
/// `example.com`), and an exact name wins over a wildcard.
///
/// The maps use std's randomly keyed hasher: the names are chosen by tenants, and a
/// keyed hash keeps a tenant from choosing names that collide to slow everyone's
/// lookups.
#[derive(Debug, Clone)]
pub struct Router<T> {
    exact: HashMap<Box<str>, T>,
    /// Keyed by what follows `*.`.
    wildcard: HashMap<Box<str>, T>,
    default: Option<T>,
}

impl<T> Default for Router<T> {
    fn default() -> Router<T> {
        Router { exact: HashMap::new(), wildcard: HashMap::new(), default: None }
    }
}

/// A name a [`Router`] holds, as its iteration gives it back.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Name<'a> {
    /// An exact name (`a.example.com`), lowercase.
    Exact(&'a str),
    /// A wildcard, by what follows its `*.` (`example.com` for `*.example.com`), lowercase.
    Wildcard(&'a str),
}

impl fmt::Display for Name<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Name::Exact(name) => f.write_str(name),
            Name::Wildcard(suffix) => write!(f, "*.{suffix}"),
        }
    }
}

impl<'a> Name<'a> {
    /// `name` as written in a configuration: `*.` in front makes a wildcard. Case and
    /// a trailing dot are not normalised here (see [`Router::insert`]).
    pub fn parse(name: &'a str) -> Name<'a> {
        match name.strip_prefix("*.") {
            Some(suffix) => Name::Wildcard(suffix),
            None => Name::Exact(name),
        }
    }
}

impl<T> Router<T> {
    /// An empty router: every name goes nowhere until names or a default are set.
    pub fn new() -> Router<T> {
        Router::default()
    }

    /// Routes `name` (`a.example.com`, or `*.example.com`) to `value`; answers the
    /// value it routed to before, if any.
    pub fn insert(&mut self, name: &str, value: T) -> Option<T> {
        match Name::parse(&normalize(name)) {
            Name::Exact(name) => self.exact.insert(name.into(), value),
            Name::Wildcard(suffix) => self.wildcard.insert(suffix.into(), value),
        }
    }

    /// Stops routing `name` (written as for [`insert`](Router::insert)); answers what it
    /// routed to.
    pub fn remove(&mut self, name: &str) -> Option<T> {
        match Name::parse(&normalize(name)) {
            Name::Exact(name) => self.exact.remove(name),
            Name::Wildcard(suffix) => self.wildcard.remove(suffix),
        }
    }

    /// Routes a hello without a name, or with one no name matches, to `value`;
    /// answers the default before.
    pub fn set_default(&mut self, value: T) -> Option<T> {
        self.default.replace(value)
    }

    /// Removes the default: such hellos go nowhere (the caller's `unrecognized_name`).
    pub fn clear_default(&mut self) -> Option<T> {
        self.default.take()
    }

    /// The default, if set.
    pub fn default_route(&self) -> Option<&T> {
        self.default.as_ref()
    }

    /// Where a ClientHello with `server_name` goes: the exact name, else the
    /// wildcard of its parent, else the default. `None`: nowhere.
    pub fn route(&self, server_name: Option<&str>) -> Option<&T> {
        let found = match server_name {
            Some(name) => self.named(name),
            None => None,
        };
        found.or(self.default.as_ref())
    }

    fn named(&self, name: &str) -> Option<&T> {
        let name = name.strip_suffix('.').unwrap_or(name);
        if name.len() > MAX_NAME {
            return None;
        }
        // rustls hands over SNI already lowercase; only a mixed-case name is copied,
        // and onto the stack.
        let mut lower = [0u8; MAX_NAME];
        let name = if name.bytes().any(|byte| byte.is_ascii_uppercase()) {
            let lower = &mut lower[..name.len()];
            lower.copy_from_slice(name.as_bytes());
            lower.make_ascii_lowercase();
            // Lowercasing ASCII letters keeps UTF-8 valid.
            std::str::from_utf8(lower).ok()?
        } else {
            name
        };
        if let Some(value) = self.exact.get(name) {
            return Some(value);
        }
        let (label, parent) = name.split_once('.')?;
        if label.is_empty() || parent.is_empty() {
            return None;
        }
        self.wildcard.get(parent)
    }

    /// Every name routed, and where to; in no particular order, the default apart.
    pub fn iter(&self) -> impl Iterator<Item = (Name<'_>, &T)> {
        let exact = self.exact.iter().map(|(name, value)| (Name::Exact(name), value));
        exact.chain(self.wildcard.iter().map(|(suffix, value)| (Name::Wildcard(suffix), value)))
    }

    /// How many names are routed (the default apart).
    pub fn len(&self) -> usize {
        self.exact.len() + self.wildcard.len()
    }

    /// No names are routed (there may be a default).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

fn normalize(name: &str) -> String {
    name.strip_suffix('.').unwrap_or(name).to_ascii_lowercase()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exact_names_wildcards_and_the_default() {
        let mut router = Router::new();
        router.insert("a.example.com", "exact");
        router.insert("*.example.com", "wildcard");
        assert_eq!(router.route(Some("a.example.com")), Some(&"exact"));
        assert_eq!(router.route(Some("b.example.com")), Some(&"wildcard"));
        assert_eq!(router.route(Some("a.b.example.com")), None);
        assert_eq!(router.route(Some("example.com")), None);
        assert_eq!(router.route(Some(".example.com")), None);
        assert_eq!(router.route(Some("")), None);
        assert_eq!(router.route(None), None);
        router.set_default("default");
        assert_eq!(router.route(Some("a.b.example.com")), Some(&"default"));
        assert_eq!(router.route(None), Some(&"default"));
        assert_eq!(router.clear_default(), Some("default"));
        assert_eq!(router.route(None), None);
    }

    #[test]
    fn case_and_a_trailing_dot_do_not_matter() {
        let mut router = Router::new();
        router.insert("A.Example.COM.", 1);
        router.insert("*.Wild.Example", 2);
        assert_eq!(router.route(Some("a.example.com")), Some(&1));
        assert_eq!(router.route(Some("A.EXAMPLE.com.")), Some(&1));
        assert_eq!(router.route(Some("X.wild.EXAMPLE")), Some(&2));
        let names: Vec<String> = router.iter().map(|(name, _)| name.to_string()).collect();
        assert!(names.contains(&"a.example.com".to_owned()) && names.contains(&"*.wild.example".to_owned()));
    }

    #[test]
    fn overlong_and_non_ascii_names_get_the_default() {
        let mut router = Router::new();
        router.set_default(0);
        router.insert("*.example.com", 1);
        let long = format!("{}.example.com", "a".repeat(250));
        assert_eq!(router.route(Some(&long)), Some(&0));
        assert_eq!(router.route(Some("É.example.com")), Some(&1));
        assert_eq!(router.route(Some("ÉX.example.com")), Some(&1));
    }

    #[test]
    fn insert_and_remove_answer_what_was_there() {
        let mut router = Router::new();
        assert_eq!(router.insert("*.example.com", 1), None);
        assert_eq!(router.insert("*.EXAMPLE.com", 2), Some(1));
        assert_eq!(router.insert("example.com", 3), None);
        assert_eq!(router.len(), 2);
        assert_eq!(router.remove("*.example.com"), Some(2));
        assert_eq!(router.remove("*.example.com"), None);
        assert_eq!(router.route(Some("a.example.com")), None);
        assert_eq!(router.remove("Example.com."), Some(3));
        assert!(router.is_empty());
    }

    #[test]
    fn ten_thousand_names_each_find_their_own() {
        let mut router = Router::new();
        for tenant in 0..10_000 {
            router.insert(&format!("tenant{tenant}.example.com"), tenant);
            router.insert(&format!("*.tenant{tenant}.example.net"), tenant + 10_000);
        }
        assert_eq!(router.len(), 20_000);
        for tenant in 0..10_000 {
            assert_eq!(router.route(Some(&format!("tenant{tenant}.example.com"))), Some(&tenant));
            assert_eq!(router.route(Some(&format!("www.tenant{tenant}.example.net"))), Some(&(tenant + 10_000)));
            assert_eq!(router.route(Some(&format!("TENANT{tenant}.example.com"))), Some(&tenant));
        }
        assert_eq!(router.route(Some("tenant10000.example.com")), None);
        assert_eq!(router.route(Some("a.b.tenant1.example.net")), None);
    }
}
