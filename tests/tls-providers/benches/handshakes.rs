//! rustls with ring beside rustls with aws-lc-rs: full TLS 1.3 handshakes (ECDSA
//! P-256 and RSA-2048 certificates), resumed TLS 1.2 handshakes, and 16 KiB records of
//! AES-128-GCM. A full handshake is measured twice: `total` (wall time, client and
//! server) and `server` (the CPU time of the server's calls into rustls only, which is
//! what an edge box pays per connection). See README.md beside this crate.
// `criterion_group!` defines a public function without a doc.
#![allow(missing_docs)]

use std::hint::black_box;
use std::io::{Read, Write};
use std::time::Duration;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use rustls::Connection;
use sandport_tls_providers::{
    Identity, KeyKind, Version, client_config, handshake, pair, providers, server_config, thread_cpu,
};

/// Full TLS 1.3 handshakes, no resumption: every iteration signs and exchanges keys.
fn full_tls13(c: &mut Criterion, kind: KeyKind, name: &str) {
    let identity = Identity::new(kind);
    let mut group = c.benchmark_group(name);
    for provider in providers() {
        let server = server_config(&provider, &identity, Version::Tls13);
        let client = client_config(&provider, &identity, Version::Tls13, false);
        group.bench_function(BenchmarkId::new("total", provider.name), |b| {
            b.iter(|| {
                let (mut c, mut s) = pair(&client, &server);
                handshake(&mut c, &mut s);
                black_box((c, s))
            })
        });
        group.bench_function(BenchmarkId::new("server", provider.name), |b| {
            b.iter_custom(|iterations| {
                (0..iterations)
                    .map(|_| {
                        let (mut c, mut s) = pair(&client, &server);
                        let server_time = handshake(&mut c, &mut s);
                        assert_eq!(s.handshake_kind(), Some(rustls::HandshakeKind::Full));
                        server_time
                    })
                    .sum()
            })
        });
    }
    group.finish();
}

fn tls13_ecdsa_p256(c: &mut Criterion) {
    full_tls13(c, KeyKind::EcdsaP256, "tls13-full-ecdsa-p256");
}

fn tls13_rsa2048(c: &mut Criterion) {
    full_tls13(c, KeyKind::Rsa2048, "tls13-full-rsa2048");
}

/// TLS 1.2 resumed by ticket: a client that resumes and keeps its ticket store, so each
/// iteration is an abbreviated handshake (no signature, no key exchange).
fn tls12_resumed(c: &mut Criterion) {
    let identity = Identity::new(KeyKind::EcdsaP256);
    let mut group = c.benchmark_group("tls12-resumed");
    for provider in providers() {
        let server = server_config(&provider, &identity, Version::Tls12);
        let client = client_config(&provider, &identity, Version::Tls12, true);
        let (mut c, mut s) = pair(&client, &server);
        handshake(&mut c, &mut s);
        group.bench_function(BenchmarkId::new("server", provider.name), |b| {
            b.iter_custom(|iterations| {
                (0..iterations)
                    .map(|_| {
                        let (mut c, mut s) = pair(&client, &server);
                        let server_time = handshake(&mut c, &mut s);
                        assert_eq!(s.handshake_kind(), Some(rustls::HandshakeKind::Resumed));
                        server_time
                    })
                    .sum()
            })
        });
    }
    group.finish();
}

/// 16 KiB records, TLS13_AES_128_GCM_SHA256: `seal` is the server encrypting one (CPU
/// time), `open` the client decrypting one. Records go in batches of 32, so that the
/// clock is read four times a batch, not a record.
fn bulk_16k(c: &mut Criterion) {
    let identity = Identity::new(KeyKind::EcdsaP256);
    let mut group = c.benchmark_group("bulk-16k-aes128gcm");
    group.throughput(Throughput::Bytes(RECORD as u64));
    for mut provider in providers() {
        let aes128 = rustls::CipherSuite::TLS13_AES_128_GCM_SHA256;
        let shared = std::sync::Arc::get_mut(&mut provider.provider).expect("provider not yet shared");
        shared.cipher_suites.retain(|suite| suite.suite() == aes128);
        let server = server_config(&provider, &identity, Version::Tls13);
        let client = client_config(&provider, &identity, Version::Tls13, false);
        let (mut c, mut s) = pair(&client, &server);
        handshake(&mut c, &mut s);
        assert_eq!(s.negotiated_cipher_suite().map(|suite| suite.suite()), Some(aes128));
        s.set_buffer_limit(None);
        c.set_buffer_limit(None);
        let mut records = Records::new();
        group.bench_function(BenchmarkId::new("seal", provider.name), |b| {
            b.iter_custom(|n| records.run(&mut s, &mut c, n).0)
        });
        group.bench_function(BenchmarkId::new("open", provider.name), |b| {
            b.iter_custom(|n| records.run(&mut s, &mut c, n).1)
        });
    }
    group.finish();
}

const RECORD: usize = 16 << 10;
const BATCH: u64 = 32;

struct Records {
    plaintext: Vec<u8>,
    received: Vec<u8>,
    wire: Vec<u8>,
}

impl Records {
    fn new() -> Records {
        Records { plaintext: vec![0x5a; RECORD], received: vec![0; RECORD], wire: Vec::new() }
    }

    /// Sends `count` records from `server` to `client`: the CPU time of sealing them
    /// and of opening them.
    fn run(&mut self, server: &mut Connection, client: &mut Connection, count: u64) -> (Duration, Duration) {
        let (mut sealing, mut opening) = (Duration::ZERO, Duration::ZERO);
        let mut left = count;
        while left > 0 {
            let batch = left.min(BATCH);
            left -= batch;
            self.wire.clear();
            let start = thread_cpu();
            for _ in 0..batch {
                server.writer().write_all(&self.plaintext).expect("write plaintext");
            }
            while server.wants_write() {
                server.write_tls(&mut self.wire).expect("write_tls");
            }
            let sealed = thread_cpu();
            let mut rest = &self.wire[..];
            for _ in 0..batch {
                let mut got = 0;
                while got < RECORD {
                    match client.reader().read(&mut self.received[got..]) {
                        Ok(read) => got += read,
                        Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => {
                            client.read_tls(&mut rest).expect("read_tls");
                            client.process_new_packets().expect("process_new_packets");
                        }
                        Err(error) => panic!("read plaintext: {error}"),
                    }
                }
            }
            let opened = thread_cpu();
            sealing += sealed - start;
            opening += opened - sealed;
        }
        black_box(&self.received);
        (sealing, opening)
    }
}

fn configured() -> Criterion {
    Criterion::default().sample_size(30).warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(4))
}

criterion_group! {
    name = handshakes;
    config = configured();
    targets = tls13_ecdsa_p256, tls13_rsa2048, tls12_resumed, bulk_16k
}
criterion_main!(handshakes);
