//! The types of the functions the host calls in a plugin, written out as the host's WIT
//! says them, and checked against a component's own type before any instance is made.
//!
//! Generated bindings check an export's type only when they load it from an instance,
//! so a plugin whose `handle` has another type would load and then fail every instance.
//! wasmtime's own typed-function check against a component not yet instantiated is only
//! in its hidden API, which promises nothing from one release to the next; this module
//! asks the public type API (`Component::get_export`, `ComponentFunc::params`, `Type`)
//! instead, and compares what it finds with a [`Shape`]: the same rules (names of
//! record fields, variant cases and enum cases; the types, recursively; parameter names
//! do not matter). A resource the host calls with is the host's own, so it must be the
//! one the component imports from the host's interface of the version the component
//! was built against. This module knows nothing of which functions are called, nor
//! when (see `exports`).

use wasmtime::component::types::{ComponentFunc, ComponentItem};
use wasmtime::component::{Component, ResourceType, Type};

/// A WIT type, as the host's side of a call expects it.
#[derive(Debug, Clone, Copy)]
pub enum Shape {
    /// `u8`.
    U8,
    /// `u16`.
    U16,
    /// `u32`.
    U32,
    /// `u64`.
    U64,
    /// `string`.
    String,
    /// `list<T>`.
    List(&'static Shape),
    /// `result<T, E>`, each side `None` for `_`.
    Result(Option<&'static Shape>, Option<&'static Shape>),
    /// A record: its fields, in order.
    Record(&'static [(&'static str, Shape)]),
    /// A variant: its cases, in order, with their payloads.
    Variant(&'static [(&'static str, Option<Shape>)]),
    /// `borrow<R>` of the resource `R` of the host's interface.
    Borrow(&'static str),
}

/// A function's parameter and result types.
#[derive(Debug, Clone, Copy)]
pub struct Signature {
    /// The parameters' types, in order.
    pub params: &'static [Shape],
    /// The results' types (none, or one).
    pub results: &'static [Shape],
}

impl Signature {
    /// Whether `func`, a function of `component`, has this signature. `host` names the
    /// host's interface, where the component imports the resources it borrows.
    pub fn matches(&self, component: &Component, host: &str, func: &ComponentFunc) -> bool {
        let cx = Cx { component, host };
        let params: Vec<Type> = func.params().map(|(_, ty)| ty).collect();
        let results: Vec<Type> = func.results().collect();
        all(&cx, &params, self.params) && all(&cx, &results, self.results)
    }
}

/// What matching needs beyond the types: where the host's resources are found.
struct Cx<'a> {
    component: &'a Component,
    host: &'a str,
}

impl Cx<'_> {
    /// The resource `name` the component imports from the host's interface.
    fn host_resource(&self, name: &str) -> Option<ResourceType> {
        let engine = self.component.engine();
        let ty = self.component.component_type();
        let ComponentItem::ComponentInstance(host) = ty.get_import(engine, self.host)?.ty else { return None };
        match host.get_export(engine, name)?.ty {
            ComponentItem::Resource(resource) => Some(resource),
            _ => None,
        }
    }
}

fn all(cx: &Cx<'_>, types: &[Type], shapes: &[Shape]) -> bool {
    types.len() == shapes.len() && types.iter().zip(shapes).all(|(ty, shape)| fits(cx, ty, shape))
}

fn fits_option(cx: &Cx<'_>, ty: Option<Type>, shape: Option<&Shape>) -> bool {
    match (ty, shape) {
        (None, None) => true,
        (Some(ty), Some(shape)) => fits(cx, &ty, shape),
        _ => false,
    }
}

fn fits(cx: &Cx<'_>, ty: &Type, shape: &Shape) -> bool {
    match (ty, shape) {
        (Type::U8, Shape::U8) | (Type::U16, Shape::U16) | (Type::U32, Shape::U32) | (Type::U64, Shape::U64) => true,
        (Type::String, Shape::String) => true,
        (Type::List(list), Shape::List(item)) => fits(cx, &list.ty(), item),
        (Type::Result(result), Shape::Result(ok, err)) => {
            fits_option(cx, result.ok(), *ok) && fits_option(cx, result.err(), *err)
        }
        (Type::Record(record), Shape::Record(fields)) => {
            record.fields().len() == fields.len()
                && record
                    .fields()
                    .zip(*fields)
                    .all(|(field, (name, shape))| field.name == *name && fits(cx, &field.ty, shape))
        }
        (Type::Variant(variant), Shape::Variant(cases)) => {
            variant.cases().len() == cases.len()
                && variant
                    .cases()
                    .zip(*cases)
                    .all(|(case, (name, shape))| case.name == *name && fits_option(cx, case.ty, shape.as_ref()))
        }
        (Type::Borrow(resource), Shape::Borrow(name)) => cx.host_resource(name).is_some_and(|host| host == *resource),
        _ => false,
    }
}
