//! What starting a plugin instance costs: the work a per-connection listener does for
//! every accepted connection (and a shared one after a fault). Each iteration starts
//! an echo instance from the pre-linked component and drops it (which returns a
//! pooled slot). Two groups:
//!
//! - `pooling knobs`: the Rust echo under each setting of [`Pooling`] measured, one
//!   knob changed at a time from [`Pooling::WASMTIME`] (wasmtime's defaults), then
//!   [`Pooling::default`] (the setting kept), and the on-demand allocator of shared
//!   listeners as a reference, all in the same run;
//! - `languages`: the echo of each language under [`Pooling::default`]. The C, Zig,
//!   Python and JavaScript echoes are built with `make` (plugins/toolchains.sh
//!   installs the toolchains); a language whose build fails is left out with a note.
//!   Compiled components are cached under the system's temporary directory, so only
//!   the first run compiles the Python and JavaScript ones (30-60 s).
//!
//! Both are measured in the CPU time of the benchmark's thread (user and system,
//! `CLOCK_THREAD_CPUTIME_ID`), which the page faults and `madvise` calls of a start
//! and drop are charged to, and which other work on a shared machine leaves alone
//! (wall time on two busy cores moved by 30% between identical entries). A third
//! group, `wall clock`, measures wasmtime's defaults and the kept setting in wall
//! time too.
//!
//! ```text
//! cargo bench -p sandport --bench instances                 # all groups
//! cargo bench -p sandport --bench instances -- 'pooling knobs'
//! ```
// `criterion_group!` defines a public function without a doc.
#![allow(missing_docs)]

use std::cell::OnceCell;
use std::path::{Path, PathBuf};

use std::time::Duration;

use criterion::measurement::{Measurement, ValueFormatter};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use nix::time::{ClockId, clock_gettime};
use sandport::listener::ListenerSpec;
use sandport::plugin::{PluginFactory, Pooling, Runtime};

/// Slots of each pooled engine: more than the benchmark holds at once.
const SLOTS: u32 = 64;

fn pooling_knobs(c: &mut Criterion<ThreadCpu>) {
    let wasmtime = Pooling::WASMTIME;
    let settings = [
        ("wasmtime defaults", Some(wasmtime)),
        ("memory keep-resident 64 KiB", Some(Pooling { memory_keep_resident: 64 << 10, ..wasmtime })),
        ("memory keep-resident 1 MiB", Some(Pooling { memory_keep_resident: 1 << 20, ..wasmtime })),
        ("pagemap scan", Some(Pooling { pagemap_scan: true, ..wasmtime })),
        (
            "scan, memory keep-resident 64 KiB",
            Some(Pooling { pagemap_scan: true, memory_keep_resident: 64 << 10, ..wasmtime }),
        ),
        (
            "scan, memory keep-resident 1 MiB",
            Some(Pooling { pagemap_scan: true, memory_keep_resident: 1 << 20, ..wasmtime }),
        ),
        ("table keep-resident 64 KiB", Some(Pooling { table_keep_resident: 64 << 10, ..wasmtime })),
        ("decommit batch 16", Some(Pooling { decommit_batch: 16, ..wasmtime })),
        ("copy-on-write off", Some(Pooling { copy_on_write: false, ..wasmtime })),
        ("table 64 KiB + batch 16", Some(Pooling { table_keep_resident: 64 << 10, decommit_batch: 16, ..wasmtime })),
        ("kept (Pooling::default)", Some(Pooling::default())),
        ("on-demand (shared listeners)", None),
    ];
    bench_settings(c, "pooling knobs", &settings);
}

fn wall_clock(c: &mut Criterion) {
    let settings = [
        ("wasmtime defaults", Some(Pooling::WASMTIME)),
        ("kept (Pooling::default)", Some(Pooling::default())),
        ("on-demand (shared listeners)", None),
    ];
    bench_settings(c, "wall clock", &settings);
}

/// One entry per setting (`None`: the on-demand allocator) in group `name`, each
/// starting and dropping a Rust echo instance.
fn bench_settings<M: Measurement>(c: &mut Criterion<M>, name: &str, settings: &[(&str, Option<Pooling>)]) {
    let spec = ListenerSpec::new("bench", "127.0.0.1:0".parse().unwrap());
    let mut group = c.benchmark_group(name);
    for &(name, pooling) in settings {
        let factory = OnceCell::new();
        group.bench_function(name, |b| {
            let factory = factory.get_or_init(|| {
                let runtime = match pooling {
                    Some(pooling) => Runtime::pooled(SLOTS, spec.limits.memory, pooling).unwrap(),
                    None => Runtime::new().unwrap(),
                };
                start(&runtime, Path::new(sandport_test_artifacts::ECHO), &spec)
            });
            b.iter(|| factory.instantiate().unwrap())
        });
    }
    group.finish();
}

fn languages(c: &mut Criterion<ThreadCpu>) {
    let spec = ListenerSpec::new("bench", "127.0.0.1:0".parse().unwrap());
    let cache = std::env::temp_dir().join("sandport-bench-instances-cache");
    let mut group = c.benchmark_group("languages");
    for language in ["rust", "c", "zig", "python", "js"] {
        let Some(echo) = echo(language) else { continue };
        let factory = OnceCell::new();
        group.bench_function(language, |b| {
            let factory = factory.get_or_init(|| {
                let runtime = Runtime::pooled(SLOTS, spec.limits.memory, Pooling::default()).unwrap();
                start(&runtime.with_cache(Some(&cache)), &echo, &spec)
            });
            b.iter(|| factory.instantiate().unwrap())
        });
    }
    group.finish();
}

/// The factory of `spec`'s instances of the plugin at `path`, which start.
fn start(runtime: &Runtime, path: &Path, spec: &ListenerSpec) -> PluginFactory {
    let plugin = runtime.load(path).unwrap();
    plugin.factory(spec, 1)
}

/// The echo component of `language`, built; `None`, with a note, if it cannot be.
fn echo(language: &str) -> Option<PathBuf> {
    if language == "rust" {
        return Some(PathBuf::from(sandport_test_artifacts::ECHO));
    }
    let folder = Path::new(sandport_test_artifacts::WORKSPACE).join("plugins").join(language).join("echo");
    sandport_test_artifacts::make(&folder, "echo").map_err(|e| eprintln!("{language} left out: {e}")).ok()
}

/// The CPU time the calling thread has used.
fn thread_cpu_time() -> Duration {
    clock_gettime(ClockId::CLOCK_THREAD_CPUTIME_ID).unwrap().into()
}

/// Criterion's measurement of the benchmark thread's CPU time (user and system).
struct ThreadCpu;

impl Measurement for ThreadCpu {
    type Intermediate = Duration;
    type Value = Duration;

    fn start(&self) -> Duration {
        thread_cpu_time()
    }

    fn end(&self, started: Duration) -> Duration {
        thread_cpu_time() - started
    }

    fn add(&self, a: &Duration, b: &Duration) -> Duration {
        *a + *b
    }

    fn zero(&self) -> Duration {
        Duration::ZERO
    }

    fn to_f64(&self, value: &Duration) -> f64 {
        value.as_nanos() as f64
    }

    fn formatter(&self) -> &dyn ValueFormatter {
        &Micros
    }
}

/// Nanoseconds shown as microseconds of CPU time.
struct Micros;

impl ValueFormatter for Micros {
    fn scale_values(&self, _typical: f64, values: &mut [f64]) -> &'static str {
        values.iter_mut().for_each(|value| *value /= 1e3);
        "µs (CPU)"
    }

    fn scale_throughputs(&self, _typical: f64, _throughput: &Throughput, values: &mut [f64]) -> &'static str {
        // Per iteration, as the groups set no throughput.
        self.scale_values(0.0, values)
    }

    fn scale_for_machines(&self, _values: &mut [f64]) -> &'static str {
        "ns"
    }
}

criterion_group! {
    name = cpu;
    config = Criterion::default().with_measurement(ThreadCpu);
    targets = pooling_knobs, languages
}
criterion_group!(wall, wall_clock);
criterion_main!(cpu, wall);
