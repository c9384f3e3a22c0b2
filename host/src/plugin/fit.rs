//! Why a component does not fit the `sandport:handler/plugin` world: every import the
//! host does not provide and every export it cannot call, each named, with the fix.
//!
//! Linking stops at the first import that does not fit, and wasmtime's message for it
//! speaks of linkers and instance exports. So when loading fails (only then: this is an
//! error path), [`diagnose`] asks the host's own linker about each import, since it
//! alone knows what the host defines, types included. It cannot be listed, but it can
//! be probed: a clone of it in which some imports are replaced by stubs that fit any
//! type links exactly when the rest fits. Imports come in dependency order (an import
//! can use only the resources of those before it), so each import is probed with the
//! ones after it stubbed, and with what was found not to fit before it stubbed too.
//! Inside an interface that the host defines under the very name imported (always so
//! for a plugin built against this host's WIT), each function and resource is probed
//! the same way, and whether the host has it at all is asked of the linker directly:
//! defining it again fails if it exists. Any other interface is judged whole: stubbing
//! inside it would hide the semver-compatible version the host may define under
//! another name.
//!
//! The exports are read from the component's type, and the functions the host calls
//! are type-checked as at load (see `exports` and `signature`), at the version of the
//! contract whose `handler` the component exports. A `sandport:handler` name of a
//! version the host does not serve is reported as that, with the versions it does.

use std::collections::BTreeSet;

use wasmtime::component::types::ComponentItem;
use wasmtime::component::{Component, Linker, LinkerInstance, ResourceType};

use super::exports::{CALLED, version_of};
use super::one_line;
use super::output::escape_controls;
use super::version::{PACKAGE, WitVersion};

/// Everything about a component that does not fit the world, one problem a line, then
/// each fix once.
#[derive(Debug, thiserror::Error)]
#[error("{}", report(.0))]
pub struct Misfit(Vec<Problem>);

/// One import or export that does not fit, by the component's own names.
#[derive(Debug, thiserror::Error)]
enum Problem {
    /// An interface (or a bare function) the host does not provide.
    #[error("imports `{0}`, which sandport does not provide")]
    NotProvided(String),
    /// A `sandport:handler` interface of a version the host does not serve.
    #[error("{verb} `{name}`: built for {PACKAGE}@{version}, but {}", speaks())]
    OtherVersion { verb: &'static str, name: String, version: String },
    /// A function or resource that an interface the host provides does not have.
    #[error("imports {}, which this host's `{interface}` does not have", member(.interface, .item))]
    Missing { interface: String, item: String },
    /// A function of an interface the host provides, with another type than the host's.
    #[error("imports {} with another type than this host's", member(.interface, .item))]
    ImportType { interface: String, item: String },
    /// No `handler` export, of any version.
    #[error("does not export {handler} (it exports {0})", handler = handler())]
    NoHandler(String),
    /// An exported interface without a function the host calls.
    #[error("exports `{interface}` without {}", member(.interface, .item))]
    NoExportFunc { interface: &'static str, item: &'static str },
    /// A function the host calls, exported with another type than the host calls it with.
    #[error("exports {} with another type than this host's", member(.interface, .item))]
    ExportType { interface: &'static str, item: &'static str },
    /// What linking found but no probe did (it should not happen): wasmtime's words.
    #[error("{0}")]
    Other(String),
}

/// What the author does about a problem, in words for any language: each toolchain
/// spells these options its own way.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Fix {
    /// Stop importing what sandport does not provide.
    Imports,
    /// Build against the host's WIT.
    Regenerate,
    /// Build for the right world.
    World,
}

impl Problem {
    /// The problem of an import that does not fit as a whole.
    fn import(name: &str) -> Problem {
        match other_version(name) {
            Some(version) => Problem::OtherVersion { verb: "imports", name: clean(name), version },
            None => Problem::NotProvided(clean(name)),
        }
    }

    fn fix(&self) -> Option<Fix> {
        match self {
            Problem::NotProvided(name) if is_sandport(name) => Some(Fix::World),
            Problem::NotProvided(_) => Some(Fix::Imports),
            Problem::Missing { interface, .. } | Problem::ImportType { interface, .. } if !is_sandport(interface) => {
                Some(Fix::Imports)
            }
            Problem::OtherVersion { .. } | Problem::Missing { .. } | Problem::ImportType { .. } => {
                Some(Fix::Regenerate)
            }
            Problem::NoHandler(_) | Problem::NoExportFunc { .. } | Problem::ExportType { .. } => Some(Fix::World),
            Problem::Other(_) => None,
        }
    }
}

/// The problems, then their fixes.
fn report(problems: &[Problem]) -> String {
    let fixes: BTreeSet<Fix> = problems.iter().filter_map(Problem::fix).collect();
    let http = problems.iter().any(|p| matches!(p, Problem::NotProvided(name) if name.starts_with("wasi:http/")));
    let problems = problems.iter().map(|problem| format!("  - {problem}"));
    let fixes = fixes.into_iter().map(|fix| format!("  fix: {}", fix.text(http)));
    problems.chain(fixes).collect::<Vec<_>>().join("\n")
}

impl Fix {
    /// The fix in words; `http`: a `wasi:http` import is among those to remove.
    fn text(self, http: bool) -> String {
        match self {
            Fix::Imports => format!(
                "a sandport plugin may import only {PACKAGE}/host (with its types) and WASI cli, clocks, random \
                 and io (filesystem and sockets are linked but grant nothing): remove what uses the other imports, \
                 or build with the toolchain option that leaves them out{}",
                // The one toolchain known to import `wasi:http` unasked; both features must
                // go (checked with componentize-js 0.23).
                if http { " (componentize-js: `-d http fetch-event`)" } else { "" }
            ),
            Fix::Regenerate => "regenerate the plugin's bindings from this sandport's wit/handler.wit (the file \
                                `sandport new` copies into every scaffold)"
                .to_owned(),
            Fix::World => "build for world `plugin` (or `migrating-plugin`) of this sandport's wit/handler.wit \
                           (the bindings generator's `-w plugin` option, or `world = \"plugin\"`)"
                .to_owned(),
        }
    }
}

/// `this host speaks sandport:handler@0.4.0 (and loads 0.3.0 or 0.2.0 or 0.1.0)`: the version of the
/// host's WIT, then the earlier ones it serves.
fn speaks() -> String {
    format!("this host speaks {PACKAGE}@{} (and loads {})", WitVersion::CURRENT.number(), earlier(|v| v.number()))
}

/// `` `sandport:handler/handler@0.4.0` or `@0.3.0` or `@0.2.0` or `@0.1.0` ``: the `handler` interface, at
/// every version the host serves.
fn handler() -> String {
    format!("`{}` or {}", WitVersion::CURRENT.handler(), earlier(|v| format!("`@{}`", v.number())))
}

/// The versions before the current one, each as `show` shows it, joined by `or`.
fn earlier<S: ToString>(show: impl Fn(WitVersion) -> S) -> String {
    let earlier = WitVersion::ALL.into_iter().filter(|&version| version != WitVersion::CURRENT);
    earlier.map(|version| show(version).to_string()).collect::<Vec<_>>().join(" or ")
}

/// `host.send` for a member of a `sandport:handler` interface; the member and its
/// interface otherwise.
fn member(interface: &str, item: &str) -> String {
    match interface.strip_prefix(PACKAGE).and_then(|rest| rest.strip_prefix('/')) {
        Some(rest) => format!("`{}.{item}`", rest.split('@').next().unwrap_or(rest)),
        None => format!("`{item}` of `{interface}`"),
    }
}

fn is_sandport(name: &str) -> bool {
    name.strip_prefix(PACKAGE).is_some_and(|rest| rest.starts_with('/'))
}

/// The version of a `sandport:handler` interface name, when the host does not serve
/// it (`(no version)` for a name without one).
fn other_version(name: &str) -> Option<String> {
    if !is_sandport(name) {
        return None;
    }
    match name.split_once('@') {
        Some((_, version)) if WitVersion::of(version).is_some() => None,
        Some((_, version)) => Some(clean(version)),
        None => Some("(no version)".to_owned()),
    }
}

/// A name from the component, safe to print.
fn clean(name: &str) -> String {
    escape_controls(name).into_owned()
}

/// Everything about `component` that does not fit `linker` (the host's) and the
/// exports the host calls. `err` is why loading failed, kept in case no probe finds it.
pub(super) fn diagnose<T: 'static>(linker: &Linker<T>, component: &Component, err: &wasmtime::Error) -> Misfit {
    let imports = imports_of(component);
    let mut problems = check_imports(linker, component, &imports);
    problems.extend(check_exports(component));
    if problems.is_empty() {
        problems.push(Problem::Other(one_line(err)));
    }
    Misfit(problems)
}

/// An import of the component, as far as linking is concerned.
enum Import {
    /// An interface: its functions and resources (its types are not linked).
    Instance { name: String, items: Vec<Item> },
    /// A bare function or resource.
    Item(Item),
}

struct Item {
    name: String,
    resource: bool,
}

impl Item {
    /// Define a stub for this item, which fits any type: a function that fails if
    /// called (a probe never calls it), or a resource of no one's.
    fn stub<T: 'static>(&self, into: &mut LinkerInstance<'_, T>) -> wasmtime::Result<()> {
        struct Placeholder;
        if self.resource {
            into.resource(&self.name, ResourceType::host::<Placeholder>(), |_, _| Ok(()))
        } else {
            into.func_new(&self.name, |_, _, _, _| Err(wasmtime::format_err!("a probe's stub")))
        }
    }
}

/// The linked items of a component's imports, in order. A resource an interface
/// only names (`use`s) from another one is the other one's: it is not linked again,
/// and a stub in its place would be another resource.
fn imports_of(component: &Component) -> Vec<Import> {
    let engine = component.engine();
    let mut resources: Vec<ResourceType> = Vec::new();
    let mut item = |name: &str, ty: &ComponentItem| match ty {
        ComponentItem::ComponentFunc(_) => Some(Item { name: name.to_owned(), resource: false }),
        ComponentItem::Resource(ty) if !resources.contains(ty) => {
            resources.push(*ty);
            Some(Item { name: name.to_owned(), resource: true })
        }
        _ => None,
    };
    let ty = component.component_type();
    let imports = ty.imports(engine).filter_map(|(name, import)| match &import.ty {
        ComponentItem::ComponentInstance(instance) => {
            let items = instance.exports(engine).filter_map(|(name, export)| item(name, &export.ty)).collect();
            Some(Import::Instance { name: name.to_owned(), items })
        }
        other => item(name, other).map(Import::Item),
    });
    imports.collect()
}

/// What a probe replaces with a stub: a whole import, or one item of an interface.
#[derive(Clone, Copy)]
enum Stub<'a> {
    Whole(&'a Import),
    Item(&'a str, &'a Item),
}

/// Whether `component` links against `linker` with `stubs` in place.
fn fits<'a, T: 'static>(linker: &Linker<T>, component: &Component, stubs: impl IntoIterator<Item = Stub<'a>>) -> bool {
    stubbed(linker, stubs).is_ok_and(|probe| probe.instantiate_pre(component).is_ok())
}

/// A clone of `linker` with `stubs` in place of what it defines (or does not).
fn stubbed<'a, T: 'static>(
    linker: &Linker<T>,
    stubs: impl IntoIterator<Item = Stub<'a>>,
) -> wasmtime::Result<Linker<T>> {
    let mut probe = linker.clone();
    probe.allow_shadowing(true);
    for stub in stubs {
        match stub {
            Stub::Whole(Import::Instance { name, items }) => {
                let mut instance = probe.instance(name)?;
                for item in items {
                    item.stub(&mut instance)?;
                }
            }
            Stub::Whole(Import::Item(item)) => item.stub(&mut probe.root())?,
            Stub::Item(instance, item) => item.stub(&mut probe.instance(instance)?)?,
        }
    }
    Ok(probe)
}

/// Whether `linker` defines `name` (in its interface `instance`) under exactly that
/// name: defining it again then fails, shadowing being off.
fn defines<T: 'static>(linker: &Linker<T>, instance: Option<&str>, name: &str) -> bool {
    let mut probe = linker.clone();
    probe.allow_shadowing(false);
    let item = Item { name: name.to_owned(), resource: false };
    let defined = match instance {
        Some(instance) => probe.instance(instance).and_then(|mut instance| item.stub(&mut instance)),
        None => item.stub(&mut probe.root()),
    };
    defined.is_err()
}

/// The imports that do not fit.
fn check_imports<T: 'static>(linker: &Linker<T>, component: &Component, imports: &[Import]) -> Vec<Problem> {
    let mut problems = Vec::new();
    let mut stubs = Vec::new();
    for (at, import) in imports.iter().enumerate() {
        let later = || imports[at + 1..].iter().map(Stub::Whole);
        if fits(linker, component, stubs.iter().copied().chain(later())) {
            continue;
        }
        let before = problems.len();
        if let Import::Instance { name, items } = import
            && defines(linker, None, name)
        {
            for (i, item) in items.iter().enumerate() {
                let problem = if !defines(linker, Some(name), &item.name) {
                    Problem::Missing { interface: clean(name), item: clean(&item.name) }
                } else {
                    let rest = items[i + 1..].iter().map(|item| Stub::Item(name, item));
                    if fits(linker, component, stubs.iter().copied().chain(rest).chain(later())) {
                        continue;
                    }
                    Problem::ImportType { interface: clean(name), item: clean(&item.name) }
                };
                problems.push(problem);
                stubs.push(Stub::Item(name, item));
            }
        }
        // Not an interface the host defines by this name, or (it should not happen)
        // no single item of it was found at fault.
        if problems.len() == before {
            let name = match import {
                Import::Instance { name, .. } => name,
                Import::Item(item) => &item.name,
            };
            problems.push(Problem::import(name));
            stubs.push(Stub::Whole(import));
        }
    }
    problems
}

/// The exports the host calls that are missing or of another type.
fn check_exports(component: &Component) -> Vec<Problem> {
    let Some(version) = version_of(component) else {
        let engine = component.engine();
        let ty = component.component_type();
        let exports: Vec<_> = ty.exports(engine).collect();
        if let Some((name, version)) = exports.iter().find_map(|(name, _)| Some((*name, other_version(name)?))) {
            return vec![Problem::OtherVersion { verb: "exports", name: clean(name), version }];
        }
        let listed: Vec<String> = exports.iter().map(|(name, export)| describe(name, &export.ty)).collect();
        let listed = if listed.is_empty() { "nothing".to_owned() } else { listed.join(", ") };
        return vec![Problem::NoHandler(listed)];
    };
    let mut problems = Vec::new();
    for called in CALLED.iter().filter(|called| called.since <= version) {
        let name = (called.interface)(version);
        // `migrate` is optional; the handler export was found above.
        let Some(interface) = component.get_export_index(None, name) else { continue };
        if component.get_export_index(Some(&interface), called.name).is_none() {
            problems.push(Problem::NoExportFunc { interface: name, item: called.name });
        } else if called.find(component, version).is_err() {
            problems.push(Problem::ExportType { interface: name, item: called.name });
        }
    }
    problems
}

/// An export, as the list of what a component exports shows it.
fn describe(name: &str, ty: &ComponentItem) -> String {
    let kind = match ty {
        ComponentItem::ComponentInstance(_) => "",
        ComponentItem::ComponentFunc(_) => "function ",
        ComponentItem::Resource(_) => "resource ",
        ComponentItem::Type(_) => "type ",
        ComponentItem::CoreFunc(_) => "core function ",
        ComponentItem::Module(_) => "module ",
        ComponentItem::Component(_) => "component ",
    };
    format!("{kind}`{}`", clean(name))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_called_functions_are_in_every_wit() {
        let wits = [
            (WitVersion::V0_4, include_str!("../../../wit/handler.wit")),
            (WitVersion::V0_3, include_str!("../../../wit/compat/0.3.0/handler.wit")),
            (WitVersion::V0_2, include_str!("../../../wit/compat/0.2.0/handler.wit")),
            (WitVersion::V0_1, include_str!("../../../wit/compat/0.1.0/handler.wit")),
        ];
        for (version, wit) in wits {
            for called in CALLED {
                let has = wit.contains(&format!("    {}: func(", called.name));
                assert_eq!(has, called.since <= version, "{} at {version:?}", called.name);
            }
        }
    }

    #[test]
    fn the_versions_served_are_named() {
        assert_eq!(speaks(), "this host speaks sandport:handler@0.4.0 (and loads 0.3.0 or 0.2.0 or 0.1.0)");
        assert_eq!(handler(), "`sandport:handler/handler@0.4.0` or `@0.3.0` or `@0.2.0` or `@0.1.0`");
    }

    #[test]
    fn members_of_sandport_interfaces_are_named_short() {
        assert_eq!(member("sandport:handler/host@0.1.0", "send"), "`host.send`");
        assert_eq!(member("wasi:io/streams@0.2.6", "splice"), "`splice` of `wasi:io/streams@0.2.6`");
        assert_eq!(member("sandport:handlers/host@0.1.0", "send"), "`send` of `sandport:handlers/host@0.1.0`");
    }

    #[test]
    fn only_sandport_interfaces_have_another_version() {
        assert_eq!(other_version("sandport:handler/host@0.5.0").as_deref(), Some("0.5.0"));
        assert_eq!(other_version("sandport:handler/host@0.4.0"), None);
        assert_eq!(other_version("sandport:handler/host@0.3.0"), None);
        assert_eq!(other_version("sandport:handler/host").as_deref(), Some("(no version)"));
        assert_eq!(other_version("sandport:handler/host@0.2.0"), None);
        assert_eq!(other_version("sandport:handler/host@0.1.0"), None);
        assert_eq!(other_version("acme:kv/store@0.2.0"), None);
    }

    #[test]
    fn each_fix_is_given_once_after_the_problems() {
        let misfit = Misfit(vec![
            Problem::Missing { interface: "sandport:handler/host@0.2.0".into(), item: "frobnicate".into() },
            Problem::ImportType { interface: "sandport:handler/host@0.2.0".into(), item: "send".into() },
            Problem::NotProvided("wasi:http/types@0.2.10".into()),
        ])
        .to_string();
        let lines: Vec<&str> = misfit.lines().collect();
        assert_eq!(lines.len(), 5, "{misfit}");
        assert_eq!(
            lines[0],
            "  - imports `host.frobnicate`, which this host's `sandport:handler/host@0.2.0` does not have"
        );
        assert_eq!(lines[1], "  - imports `host.send` with another type than this host's");
        assert_eq!(lines[2], "  - imports `wasi:http/types@0.2.10`, which sandport does not provide");
        assert!(
            lines[3].starts_with("  fix: a sandport plugin may import only")
                && lines[3].ends_with("(componentize-js: `-d http fetch-event`)")
        );
        assert!(lines[4].starts_with("  fix: regenerate the plugin's bindings"), "{misfit}");
    }

    #[test]
    fn the_http_hint_comes_only_with_an_http_import() {
        let misfit = Misfit(vec![Problem::NotProvided("acme:kv/store@0.1.0".into())]).to_string();
        assert!(misfit.contains("leaves them out") && !misfit.contains("componentize-js"), "{misfit}");
    }
}
