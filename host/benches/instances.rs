//! What starting a plugin instance costs: the work a per-connection listener does for
//! every accepted connection (and a shared one after a fault). Compares wasmtime's
//! on-demand allocator with the pooling one `instance = "per-connection"` uses, in the
//! same run. Each iteration starts an echo instance from the pre-linked component and
//! drops it (which returns a pooled slot).
//!
//! ```text
//! cargo bench -p sandport --bench instances
//! ```
// `criterion_group!` defines a public function without a doc.
#![allow(missing_docs)]

use std::path::Path;

use criterion::{Criterion, criterion_group, criterion_main};
use sandport::listener::ListenerSpec;
use sandport::plugin::Runtime;

fn instance_start(c: &mut Criterion) {
    let spec = ListenerSpec::new("bench", "127.0.0.1:0".parse().unwrap());
    let runtimes =
        [("on-demand", Runtime::new().unwrap()), ("pooled", Runtime::pooled(64, spec.limits.memory).unwrap())];
    let mut group = c.benchmark_group("instance start and drop");
    for (name, runtime) in &runtimes {
        let plugin = runtime.load(Path::new(sandport_test_artifacts::ECHO)).unwrap();
        let factory = plugin.factory(&spec, 1);
        group.bench_function(*name, |b| b.iter(|| factory.instantiate().unwrap()));
    }
    group.finish();
}

criterion_group!(benches, instance_start);
criterion_main!(benches);
