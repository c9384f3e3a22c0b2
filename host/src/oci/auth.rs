//! Which credentials a request to a registry carries, and how to name them in an error
//! without their secret.
//!
//! This module owns the precedence (the settings' own table, then the Docker config
//! file, then anonymous) and the reading of secrets, which happens at each use so a
//! rotated password file is picked up. It never logs or formats a secret: what leaves
//! it for a message is a [`Credentials::describe`] line.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use oci_client::secrets::RegistryAuth;
use serde::Deserialize;

use super::{OciError, Reference};
use crate::regular_file::ReadError;

/// The largest Docker config file read.
const MAX_DOCKER_CONFIG: u64 = 1 << 20;

/// A secret, read at each use.
#[derive(Clone, PartialEq, Eq)]
pub enum Secret {
    /// Given as is.
    Value(String),
    /// The value of this environment variable.
    Env(String),
    /// The contents of this file (a trailing newline dropped).
    File(PathBuf),
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Secret::Value(_) => f.write_str("Secret::Value(..)"),
            Secret::Env(name) => write!(f, "Secret::Env({name:?})"),
            Secret::File(path) => write!(f, "Secret::File({path:?})"),
        }
    }
}

impl Secret {
    /// The secret now; the error names where it was looked for.
    pub fn read(&self) -> Result<String, String> {
        match self {
            Secret::Value(value) => Ok(value.clone()),
            Secret::Env(name) => match std::env::var(name) {
                Ok(value) if !value.is_empty() => Ok(value),
                _ => Err(format!("environment variable {name} is not set")),
            },
            Secret::File(path) => std::fs::read_to_string(path)
                .map(|text| text.trim_end_matches(['\n', '\r']).to_owned())
                .map_err(|err| format!("cannot read {}: {err}", path.display())),
        }
    }

    /// Where it comes from, for a message (never the value).
    fn origin(&self) -> String {
        match self {
            Secret::Value(_) => "given inline".into(),
            Secret::Env(name) => format!("from ${name}"),
            Secret::File(path) => format!("from {}", path.display()),
        }
    }
}

/// Credentials for one registry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Auth {
    /// A user and password: sent as HTTP basic, or to the registry's token service when
    /// it asks for bearer tokens.
    Basic {
        /// The user.
        username: String,
        /// The password.
        password: Secret,
    },
    /// A ready bearer token, sent as is.
    Bearer(Secret),
}

/// What a request carries, and a line naming it for errors.
pub(super) struct Credentials {
    pub(super) auth: RegistryAuth,
    describe: String,
}

impl Credentials {
    /// Which credentials were tried, e.g. "username `bot` (password from $PASS, [oci.auth])".
    pub(super) fn describe(&self) -> &str {
        &self.describe
    }
}

/// The credentials for `registry`: `configured[registry]`, else the Docker config's
/// entry, else anonymous.
pub(super) fn credentials(
    reference: &Reference,
    configured: &BTreeMap<String, Auth>,
    docker_config: Option<&Path>,
) -> Result<Credentials, OciError> {
    let registry = reference.registry();
    let failed = |why: String| OciError::Credentials {
        reference: reference.to_string(),
        why: format!("[oci.auth] for {registry}: {why}"),
    };
    if let Some(auth) = configured.get(registry) {
        return Ok(match auth {
            Auth::Basic { username, password } => Credentials {
                auth: RegistryAuth::Basic(username.clone(), password.read().map_err(failed)?),
                describe: format!("username `{username}` (password {}, [oci.auth])", password.origin()),
            },
            Auth::Bearer(token) => Credentials {
                auth: RegistryAuth::Bearer(token.read().map_err(failed)?),
                describe: format!("a bearer token ({}, [oci.auth])", token.origin()),
            },
        });
    }
    let path = docker_config.map(Path::to_path_buf).or_else(default_docker_config);
    let Some(path) = path else {
        return Ok(anonymous("no credentials configured and no Docker config file"));
    };
    let bad = |why: String| OciError::Credentials {
        reference: reference.to_string(),
        why: format!("Docker config {}: {why}", path.display()),
    };
    match docker_entry(&path, registry).map_err(bad)? {
        Some(found) => Ok(found),
        None => Ok(anonymous(&format!("no entry for {registry} in [oci.auth] or {}", path.display()))),
    }
}

fn anonymous(why: &str) -> Credentials {
    Credentials { auth: RegistryAuth::Anonymous, describe: format!("anonymous ({why})") }
}

/// `$DOCKER_CONFIG/config.json`, else `~/.docker/config.json`.
fn default_docker_config() -> Option<PathBuf> {
    let nonempty = |name| std::env::var_os(name).filter(|value| !value.is_empty()).map(PathBuf::from);
    nonempty("DOCKER_CONFIG")
        .map(|dir| dir.join("config.json"))
        .or_else(|| nonempty("HOME").map(|home| home.join(".docker/config.json")))
}

/// The parts of a Docker `config.json` used here (credential helpers are not).
#[derive(Deserialize, Default)]
struct DockerConfig {
    #[serde(default)]
    auths: BTreeMap<String, DockerAuth>,
}

#[derive(Deserialize, Default)]
struct DockerAuth {
    auth: Option<String>,
    username: Option<String>,
    password: Option<String>,
    identitytoken: Option<String>,
}

/// The Docker config's credentials for `registry`; None when the file is absent or
/// has no entry for it.
fn docker_entry(path: &Path, registry: &str) -> Result<Option<Credentials>, String> {
    let text = match crate::regular_file::read(path, MAX_DOCKER_CONFIG) {
        Ok(bytes) => bytes,
        Err(ReadError::Io(err)) if err.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(err) => return Err(err.to_string()),
    };
    let config: DockerConfig = serde_json::from_slice(&text).map_err(|err| err.to_string())?;
    let Some(entry) = config.auths.iter().find(|(key, _)| registry_key(key) == registry).map(|(_, entry)| entry) else {
        return Ok(None);
    };
    let from = path.display();
    if let Some(token) = entry.identitytoken.as_ref().filter(|token| !token.is_empty()) {
        return Ok(Some(Credentials {
            auth: RegistryAuth::Bearer(token.clone()),
            describe: format!("the identity token for {registry} in {from}"),
        }));
    }
    let (username, password) = match (&entry.username, &entry.password, &entry.auth) {
        (Some(username), Some(password), _) => (username.clone(), password.clone()),
        (_, _, Some(encoded)) => {
            let decoded = STANDARD
                .decode(encoded.trim())
                .ok()
                .and_then(|bytes| String::from_utf8(bytes).ok())
                .ok_or_else(|| format!("auths.{registry}.auth is not base64 of USER:PASSWORD"))?;
            let (username, password) = decoded
                .split_once(':')
                .ok_or_else(|| format!("auths.{registry}.auth is not base64 of USER:PASSWORD"))?;
            (username.to_owned(), password.to_owned())
        }
        _ => return Err(format!("auths.{registry} has no auth, username/password or identitytoken")),
    };
    Ok(Some(Credentials {
        describe: format!("username `{username}` (from {from})"),
        auth: RegistryAuth::Basic(username, password),
    }))
}

/// A Docker config key as a registry address: `https://host:port/v1/` -> `host:port`.
fn registry_key(key: &str) -> &str {
    let key = key.strip_prefix("https://").or_else(|| key.strip_prefix("http://")).unwrap_or(key);
    key.split('/').next().unwrap_or(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(text: &str) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.json");
        std::fs::write(&path, text).unwrap();
        (dir, path)
    }

    fn r(registry: &str) -> Reference {
        format!("oci://{registry}/echo").parse().unwrap()
    }

    fn basic(credentials: &Credentials) -> (String, String) {
        match &credentials.auth {
            RegistryAuth::Basic(user, password) => (user.clone(), password.clone()),
            _ => panic!("not basic: {}", credentials.describe()),
        }
    }

    #[test]
    fn docker_config_forms() {
        let encoded = STANDARD.encode("alice:pa:ss");
        let (_dir, path) = config(&format!(
            r#"{{"auths": {{
                "https://one.example:5000": {{"auth": "{encoded}"}},
                "two.example": {{"username": "bob", "password": "pw"}},
                "https://three.example/v1/": {{"identitytoken": "tok"}},
                "four.example": {{}}
            }}, "credsStore": "desktop"}}"#
        ));
        let none = BTreeMap::new();
        let one = credentials(&r("one.example:5000"), &none, Some(&path)).unwrap();
        assert_eq!(basic(&one), ("alice".into(), "pa:ss".into()));
        assert!(one.describe().contains("alice") && !one.describe().contains("pa:ss"), "{}", one.describe());
        assert_eq!(basic(&credentials(&r("two.example"), &none, Some(&path)).unwrap()), ("bob".into(), "pw".into()));
        let three = credentials(&r("three.example"), &none, Some(&path)).unwrap();
        assert!(matches!(&three.auth, RegistryAuth::Bearer(token) if token == "tok"));
        let err = credentials(&r("four.example"), &none, Some(&path)).err().unwrap().to_string();
        assert!(err.contains("four.example") && err.contains("config.json"), "{err}");
        let other = credentials(&r("five.example"), &none, Some(&path)).unwrap();
        assert!(matches!(other.auth, RegistryAuth::Anonymous));
        assert!(other.describe().contains("anonymous"), "{}", other.describe());
    }

    #[test]
    fn settings_beat_the_docker_config_and_secrets_stay_out_of_messages() {
        let (_dir, path) = config(r#"{"auths": {"r.example": {"username": "docker", "password": "x"}}}"#);
        let password_file = path.with_file_name("password");
        std::fs::write(&password_file, "hunter2\n").unwrap();
        let configured = BTreeMap::from([(
            "r.example".to_owned(),
            Auth::Basic { username: "bot".into(), password: Secret::File(password_file.clone()) },
        )]);
        let found = credentials(&r("r.example"), &configured, Some(&path)).unwrap();
        assert_eq!(basic(&found), ("bot".into(), "hunter2".into()));
        assert!(!found.describe().contains("hunter2"), "{}", found.describe());
        let missing = BTreeMap::from([(
            "r.example".to_owned(),
            Auth::Bearer(Secret::Env("SANDPORT_TEST_SURELY_UNSET_TOKEN".into())),
        )]);
        let err = credentials(&r("r.example"), &missing, Some(&path)).err().unwrap().to_string();
        assert!(err.contains("SANDPORT_TEST_SURELY_UNSET_TOKEN") && err.contains("r.example"), "{err}");
    }

    #[test]
    fn absent_or_broken_docker_config() {
        let none = BTreeMap::new();
        let absent = credentials(&r("r.example"), &none, Some(Path::new("/nonexistent/config.json"))).unwrap();
        assert!(matches!(absent.auth, RegistryAuth::Anonymous));
        let (_dir, path) = config("{not json");
        let err = credentials(&r("r.example"), &none, Some(&path)).err().unwrap().to_string();
        assert!(err.contains("config.json"), "{err}");
        let (_dir, path) = config(r#"{"auths": {"r.example": {"auth": "!!!"}}}"#);
        let err = credentials(&r("r.example"), &none, Some(&path)).err().unwrap().to_string();
        assert!(err.contains("base64"), "{err}");
    }
}
