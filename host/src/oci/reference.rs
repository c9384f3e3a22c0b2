//! `oci://` references: which registry, repository, tag and digest a plugin comes from.
//!
//! This module owns the syntax of a reference and nothing else: it never touches the
//! network or a file, and it refuses what a registry would refuse later (upper-case
//! repositories, a digest that is not sha256) so that a typo fails when the config is
//! read, not on the first pull.

use std::fmt;
use std::str::FromStr;

use super::OciError;

/// The scheme every reference starts with.
pub const SCHEME: &str = "oci://";

/// `oci://HOST[:PORT]/REPOSITORY[:TAG][@sha256:HEX]`. A tag defaults to `latest` when
/// neither tag nor digest is given; [`fmt::Display`] prints it back in that form.
#[derive(Clone, PartialEq, Eq, Hash, Debug)]
pub struct Reference {
    registry: String,
    repository: String,
    tag: Option<String>,
    digest: Option<String>,
}

impl Reference {
    /// The registry, `host:port` as written.
    pub fn registry(&self) -> &str {
        &self.registry
    }

    /// The repository within the registry (`tenants/echo`).
    pub fn repository(&self) -> &str {
        &self.repository
    }

    /// The tag, if the reference has one (always, when it has no digest).
    pub fn tag(&self) -> Option<&str> {
        self.tag.as_deref()
    }

    /// `sha256:...` when the reference is pinned to one manifest.
    pub fn digest(&self) -> Option<&str> {
        self.digest.as_deref()
    }

    /// Whether the reference names one manifest by digest (a tag beside it is only a
    /// label then: the digest decides what is pulled).
    pub fn is_pinned(&self) -> bool {
        self.digest.is_some()
    }

    /// The same repository pinned to `digest` (the tag kept as a label).
    pub fn pinned(&self, digest: &str) -> Reference {
        Reference { digest: Some(digest.to_owned()), ..self.clone() }
    }

    /// The form oci-client speaks; the digest wins over the tag, as it does here.
    pub(super) fn to_client(&self) -> oci_client::Reference {
        let (registry, repository) = (self.registry.clone(), self.repository.clone());
        match (&self.digest, &self.tag) {
            (Some(digest), _) => oci_client::Reference::with_digest(registry, repository, digest.clone()),
            (None, Some(tag)) => oci_client::Reference::with_tag(registry, repository, tag.clone()),
            (None, None) => oci_client::Reference::with_tag(registry, repository, "latest".into()),
        }
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{SCHEME}{}/{}", self.registry, self.repository)?;
        if let Some(tag) = &self.tag {
            write!(f, ":{tag}")?;
        }
        if let Some(digest) = &self.digest {
            write!(f, "@{digest}")?;
        }
        Ok(())
    }
}

impl FromStr for Reference {
    type Err = OciError;

    fn from_str(text: &str) -> Result<Reference, OciError> {
        parse(text).map_err(|why| OciError::Reference { text: text.to_owned(), why })
    }
}

fn parse(text: &str) -> Result<Reference, String> {
    let rest = text.strip_prefix(SCHEME).ok_or("it must start with oci://")?;
    let (registry, path) = rest.split_once('/').ok_or("it names no repository (oci://HOST[:PORT]/REPOSITORY)")?;
    check_registry(registry)?;
    let (name, digest) = match path.split_once('@') {
        Some((name, digest)) => (name, Some(check_digest(digest)?)),
        None => (path, None),
    };
    // A colon after the last slash starts the tag; one before it would be a port, and
    // ports belong to the registry.
    let last_slash = name.rfind('/').map_or(0, |at| at + 1);
    let (repository, tag) = match name[last_slash..].find(':') {
        Some(at) => (&name[..last_slash + at], Some(check_tag(&name[last_slash + at + 1..])?)),
        None => (name, None),
    };
    check_repository(repository)?;
    let tag = tag.or_else(|| digest.is_none().then(|| "latest".to_owned()));
    Ok(Reference { registry: registry.to_owned(), repository: repository.to_owned(), tag, digest })
}

fn check_registry(registry: &str) -> Result<(), String> {
    let (host, port) = match registry.find(']') {
        // [IPv6] or [IPv6]:PORT
        Some(end) if registry.starts_with('[') => {
            let (host, rest) = registry.split_at(end + 1);
            (host, (!rest.is_empty()).then(|| rest.strip_prefix(':').unwrap_or(rest)))
        }
        _ => match registry.rsplit_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (registry, None),
        },
    };
    let host_ok = if let Some(inner) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        inner.parse::<std::net::Ipv6Addr>().is_ok()
    } else {
        !host.is_empty()
            && host.split('.').all(|label| {
                !label.is_empty()
                    && !label.starts_with('-')
                    && !label.ends_with('-')
                    && label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            })
    };
    if !host_ok {
        return Err(format!("`{registry}` is not a registry host (HOST or HOST:PORT)"));
    }
    match port {
        Some(port) if port.parse::<u16>().map_or(true, |port| port == 0) => {
            Err(format!("`{port}` in `{registry}` is not a port"))
        }
        _ => Ok(()),
    }
}

/// Path components of lower-case letters and digits, joined by `.`, `_`, `__` or
/// dashes (the distribution spec's grammar).
fn check_repository(repository: &str) -> Result<(), String> {
    let component_ok = |component: &str| {
        let bytes = component.as_bytes();
        let alnum = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
        !bytes.is_empty()
            && alnum(bytes[0])
            && alnum(bytes[bytes.len() - 1])
            && bytes.iter().all(|&b| alnum(b) || matches!(b, b'.' | b'_' | b'-'))
            && !component.contains("..")
            && !component.contains("___")
            && !component.contains("._")
            && !component.contains("_.")
    };
    if repository.is_empty() || repository.len() > 255 || !repository.split('/').all(component_ok) {
        return Err(format!(
            "`{repository}` is not a repository name (lower-case letters and digits, separated by `/`, `.`, `_` or `-`)"
        ));
    }
    Ok(())
}

fn check_tag(tag: &str) -> Result<String, String> {
    let bytes = tag.as_bytes();
    let ok = !bytes.is_empty()
        && bytes.len() <= 128
        && (bytes[0].is_ascii_alphanumeric() || bytes[0] == b'_')
        && bytes.iter().all(|&b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
    if ok {
        Ok(tag.to_owned())
    } else {
        Err(format!("`{tag}` is not a tag (letters, digits, `_`, `.`, `-`; up to 128)"))
    }
}

fn check_digest(digest: &str) -> Result<String, String> {
    let hex = digest
        .strip_prefix("sha256:")
        .ok_or_else(|| format!("`{digest}` is not a digest: only sha256:HEX is accepted"))?;
    if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
        return Err(format!("`{digest}` is not a digest: sha256: takes 64 lower-case hex digits"));
    }
    Ok(digest.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEX: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    #[test]
    fn good_forms_parse_and_print_back() {
        let cases = [
            ("oci://registry.example.com/tenants/echo:stable", "registry.example.com", "tenants/echo", Some("stable")),
            ("oci://127.0.0.1:5000/echo", "127.0.0.1:5000", "echo", Some("latest")),
            ("oci://localhost:5000/a/b/c-d_e.f:v1.2.3", "localhost:5000", "a/b/c-d_e.f", Some("v1.2.3")),
            ("oci://[::1]:5000/echo:x", "[::1]:5000", "echo", Some("x")),
        ];
        for (text, registry, repository, tag) in cases {
            let reference: Reference = text.parse().unwrap();
            assert_eq!((reference.registry(), reference.repository(), reference.tag()), (registry, repository, tag));
            assert!(!reference.is_pinned());
            assert_eq!(reference.to_string().parse::<Reference>().unwrap(), reference);
        }
        assert_eq!("oci://h/echo".parse::<Reference>().unwrap().to_string(), "oci://h/echo:latest");
    }

    #[test]
    fn a_digest_pins_with_or_without_a_tag() {
        let pinned: Reference = format!("oci://h:1/echo@sha256:{HEX}").parse().unwrap();
        assert!(pinned.is_pinned());
        assert_eq!(pinned.tag(), None);
        assert_eq!(pinned.digest(), Some(format!("sha256:{HEX}").as_str()));
        assert_eq!(pinned.to_string(), format!("oci://h:1/echo@sha256:{HEX}"));
        let both: Reference = format!("oci://h:1/echo:v2@sha256:{HEX}").parse().unwrap();
        assert_eq!((both.tag(), both.is_pinned()), (Some("v2"), true));
        assert_eq!(both.to_string(), format!("oci://h:1/echo:v2@sha256:{HEX}"));
    }

    #[test]
    fn bad_forms_say_why() {
        let cases = [
            ("registry.example.com/echo", "oci://"),
            ("https://h/echo", "oci://"),
            ("oci://h", "no repository"),
            ("oci:///echo", "registry host"),
            ("oci://h:0/echo", "not a port"),
            ("oci://h:99999/echo", "not a port"),
            ("oci://h/Echo", "repository name"),
            ("oci://h/echo/", "repository name"),
            ("oci://h/-echo", "repository name"),
            ("oci://h/echo:", "not a tag"),
            ("oci://h/echo:-x", "not a tag"),
            ("oci://h/echo@sha512:abc", "only sha256"),
            ("oci://h/echo@sha256:abc", "64 lower-case hex"),
            ("oci://h/echo@sha256:0123456789ABCDEF0123456789abcdef0123456789abcdef0123456789abcdef", "hex"),
            ("oci://bad_host/echo", "registry host"),
        ];
        for (text, needle) in cases {
            let err = text.parse::<Reference>().unwrap_err().to_string();
            assert!(err.contains(needle), "{text}: {err}");
            assert!(err.contains(text), "{text}: {err}");
        }
    }
}
