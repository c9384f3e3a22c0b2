//! The versions of the `sandport:handler` contract this host serves, and the names a
//! component gives its interfaces at each.
//!
//! A plugin is built against one version of the WIT and names every interface with it
//! (`sandport:handler/host@0.2.0`). For the component model a 0.x minor version is a
//! breaking one (a plugin importing `host@0.1.0` does not link against `host@0.2.0`), so
//! the linker defines each version's `host` under its own name (`linker`) and a
//! component's exports are looked for at each (`exports`). This module only names the
//! versions; what each provides is in their bindings (`bindings`).

/// The WIT package a plugin is built against.
pub const PACKAGE: &str = "sandport:handler";

/// A version of the contract this host serves, in the order they were released.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum WitVersion {
    /// 0.1.0 (`wit/compat/0.1.0`), without `tls-info`.
    V0_1,
    /// 0.2.0 (`wit/compat/0.2.0`), which added `tls-info`.
    V0_2,
    /// 0.3.0 (`wit/compat/0.3.0`), which added `migrate`'s instance-level hand-over and
    /// made a migration all or nothing.
    V0_3,
    /// 0.4.0 (`wit/handler.wit`), which added `mbuf.pipe-to`.
    V0_4,
}

impl WitVersion {
    /// The version this host speaks: that of `wit/handler.wit`, which the SDK, the
    /// bindings of every language and `sandport new` are built against.
    pub const CURRENT: WitVersion = WitVersion::V0_4;

    /// Every version this host serves, the current one first.
    pub const ALL: [WitVersion; 4] = [WitVersion::V0_4, WitVersion::V0_3, WitVersion::V0_2, WitVersion::V0_1];

    /// The version's number, as interface names carry it (`0.2.0`).
    pub fn number(self) -> &'static str {
        match self {
            WitVersion::V0_1 => "0.1.0",
            WitVersion::V0_2 => "0.2.0",
            WitVersion::V0_3 => "0.3.0",
            WitVersion::V0_4 => "0.4.0",
        }
    }

    /// The version whose number is `number`, if this host serves it.
    pub fn of(number: &str) -> Option<WitVersion> {
        WitVersion::ALL.into_iter().find(|version| version.number() == number)
    }

    /// The name of the `host` interface, which a plugin imports.
    pub fn host(self) -> &'static str {
        match self {
            WitVersion::V0_1 => "sandport:handler/host@0.1.0",
            WitVersion::V0_2 => "sandport:handler/host@0.2.0",
            WitVersion::V0_3 => "sandport:handler/host@0.3.0",
            WitVersion::V0_4 => "sandport:handler/host@0.4.0",
        }
    }

    /// The name of the `handler` interface, which every plugin exports.
    pub fn handler(self) -> &'static str {
        match self {
            WitVersion::V0_1 => "sandport:handler/handler@0.1.0",
            WitVersion::V0_2 => "sandport:handler/handler@0.2.0",
            WitVersion::V0_3 => "sandport:handler/handler@0.3.0",
            WitVersion::V0_4 => "sandport:handler/handler@0.4.0",
        }
    }

    /// Whether a plugin of this version keeps serving a connection it handed over (a
    /// migration may then be called off with nothing to undo), and has the
    /// instance-level hand-over. Before 0.3.0 `hand-over` forgot the connection.
    pub fn hands_over_all_or_nothing(self) -> bool {
        self >= WitVersion::V0_3
    }

    /// The name of the `migrate` interface, which a plugin may export.
    pub fn migrate(self) -> &'static str {
        match self {
            WitVersion::V0_1 => "sandport:handler/migrate@0.1.0",
            WitVersion::V0_2 => "sandport:handler/migrate@0.2.0",
            WitVersion::V0_3 => "sandport:handler/migrate@0.3.0",
            WitVersion::V0_4 => "sandport:handler/migrate@0.4.0",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each version's names against the WIT file its bindings are generated from.
    #[test]
    fn the_names_follow_the_wit_files() {
        let wit = |version| match version {
            WitVersion::V0_1 => include_str!("../../../wit/compat/0.1.0/handler.wit"),
            WitVersion::V0_2 => include_str!("../../../wit/compat/0.2.0/handler.wit"),
            WitVersion::V0_3 => include_str!("../../../wit/compat/0.3.0/handler.wit"),
            WitVersion::V0_4 => include_str!("../../../wit/handler.wit"),
        };
        for version in WitVersion::ALL {
            let number = version.number();
            assert!(wit(version).contains(&format!("\npackage {PACKAGE}@{number};\n")), "{number}");
            for (name, interface) in [("host", version.host()), ("handler", version.handler())] {
                assert_eq!(interface, format!("{PACKAGE}/{name}@{number}"));
                assert!(wit(version).contains(&format!("\ninterface {name} {{")), "{interface}");
            }
            assert_eq!(version.migrate(), format!("{PACKAGE}/migrate@{number}"));
            assert_eq!(WitVersion::of(number), Some(version));
        }
        assert_eq!(WitVersion::ALL[0], WitVersion::CURRENT);
        assert_eq!(WitVersion::of("0.5.0"), None);
    }
}
