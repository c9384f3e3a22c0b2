//! The primitives under a handshake, each provider as it comes: signing (ECDSA P-256,
//! RSA-2048 PSS), each key exchange (two key generations and one agreement, as client
//! and server do between them), and the key exchange a rustls client and server agree
//! on with the defaults. CPU time per operation.
//!
//! ```text
//! cargo run --release -p sandport-tls-providers --example primitives
//! ```

use std::hint::black_box;
use std::time::Duration;

use rustls::SignatureScheme;
use rustls::pki_types::PrivateKeyDer;
use sandport_tls_providers::{
    Identity, KeyKind, Version, client_config, defaults, handshake, pair, server_config, thread_cpu,
};

const ROUNDS: u32 = 300;

fn per_round(mut operation: impl FnMut()) -> Duration {
    let start = thread_cpu();
    for _ in 0..ROUNDS {
        operation();
    }
    (thread_cpu() - start) / ROUNDS
}

fn main() {
    for (kind, scheme) in [
        (KeyKind::EcdsaP256, SignatureScheme::ECDSA_NISTP256_SHA256),
        (KeyKind::Rsa2048, SignatureScheme::RSA_PSS_SHA256),
    ] {
        let identity = Identity::new(kind);
        for provider in defaults() {
            let key = provider.provider.key_provider.load_private_key(PrivateKeyDer::Pkcs8(identity.key.clone_key()));
            let signer = key.expect("key").choose_scheme(&[scheme]).expect("scheme");
            let cost = per_round(|| {
                black_box(signer.sign(b"a TLS 1.3 CertificateVerify").expect("sign"));
            });
            println!("sign {kind:?} {}: {cost:?}", provider.name);
        }
    }
    for provider in defaults() {
        for group in &provider.provider.kx_groups {
            // A KEM's share is not a Diffie-Hellman share: the hybrid is measured in a
            // handshake (benches/handshakes.rs), not here.
            if group.name().as_str().is_some_and(|name| name.contains("MLKEM")) {
                continue;
            }
            let cost = per_round(|| {
                let ours = group.start().expect("key share");
                let theirs = group.start().expect("key share");
                black_box(ours.complete(theirs.pub_key()).expect("agreement"));
            });
            println!("key exchange {:?} {}: {cost:?}", group.name(), provider.name);
        }
    }
    let identity = Identity::new(KeyKind::EcdsaP256);
    for provider in defaults() {
        let server = server_config(&provider, &identity, Version::Tls13);
        let client = client_config(&provider, &identity, Version::Tls13, false);
        let mut group = None;
        let cost = per_round(|| {
            let (mut c, mut s) = pair(&client, &server);
            handshake(&mut c, &mut s);
            group = s.negotiated_key_exchange_group().map(|group| group.name());
        });
        println!("full TLS 1.3 handshake, defaults, {}: {group:?}, client and server together {cost:?}", provider.name);
    }
}
