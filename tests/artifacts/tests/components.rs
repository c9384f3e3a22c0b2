//! The build script produced a component for every plugin.

/// The preamble of a component: the wasm magic, then version 0x0d in layer 1
/// (a core module has version 1 in layer 0).
const COMPONENT_PREAMBLE: &[u8] = b"\0asm\x0d\0\x01\0";

#[test]
fn every_plugin_is_a_component() {
    assert_eq!(sandport_test_artifacts::ALL.len(), 19);
    for (package, path) in sandport_test_artifacts::ALL {
        let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{package}: {path}: {e}"));
        assert!(bytes.starts_with(COMPONENT_PREAMBLE), "{package}: {path} is not a wasm component");
    }
}
