//! Certificates change live: by the admin API, the watcher (files rewritten, a
//! Kubernetes Secret's `..data` symlink flipped) and SIGHUP, new handshakes get the
//! new certificate while open connections go on; a certificate that does not parse,
//! does not match its key or has expired is refused with its reason and the old one
//! keeps serving; the expiry metric follows the served certificate; and a thousand
//! rotations under a steady stream of handshakes fail none of them.

use std::collections::HashSet;
use std::fs;
use std::net::SocketAddr;
use std::os::unix::fs::symlink;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use time::OffsetDateTime;

use crate::admin::admin_table;
use crate::bounded::{Reply, request, text};
use crate::harness::{PATIENCE, Server, free_address, plugins};
use crate::tls_kit::{Pair, Pki, TlsClient, leaf, served};
use crate::tls_routing::{Scrape, admin_of, hello, server_names, tenant, wait_for_sample};

/// Copy `from`'s certificate and key over the files of `to`, in place, as `cp` does.
fn install(from: &Pair, to: &Pair) {
    fs::copy(&from.cert, &to.cert).unwrap();
    fs::copy(&from.key, &to.key).unwrap();
}

/// Files in `pki`'s folder named `name.crt` and `name.key`, holding `pair` for now:
/// what a listener serves and the test rewrites.
fn served_files(pki: &Pki, name: &str, pair: &Pair) -> Pair {
    let files =
        Pair { cert: pki.dir.path().join(format!("{name}.crt")), key: pki.dir.path().join(format!("{name}.key")) };
    install(pair, &files);
    files
}

/// `POST /listeners/NAME/certificate`.
fn reload_certificate(admin: SocketAddr, name: &str) -> Reply {
    let head = format!("POST /listeners/{name}/certificate HTTP/1.1");
    request(admin, &head, b"", PATIENCE).expect("the admin API answers")
}

/// The `changed` of a 200 answer to [`reload_certificate`].
fn changed(reply: &Reply) -> bool {
    assert_eq!(reply.status, 200, "{}", reply.body);
    let body: serde_json::Value = serde_json::from_str(&reply.body).unwrap();
    body["changed"].as_bool().unwrap_or_else(|| panic!("{}", reply.body))
}

/// Whether a new connection for `name` gets `pair`'s certificate.
fn serves(addr: SocketAddr, ca: &Path, name: &str, pair: &Pair) -> bool {
    let mut client = TlsClient::connect(addr, ca, hello(name));
    assert_eq!(client.ask("still echoing"), "still echoing");
    served(&client) == leaf(pair)
}

/// The log lines saying that a certificate for `name` was rotated (its names are in
/// brackets in the line).
fn rotations(server: &Server, name: &str) -> usize {
    let marker = format!("[{name}]");
    server.log().lines().filter(|l| l.contains("certificate rotated") && l.contains(&marker)).count()
}

/// Wait until the certificate for `name` was rotated `count` times in all.
fn wait_for_rotations(server: &Server, name: &str, count: usize) {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let seen = rotations(server, name);
        assert!(seen <= count, "{name}: rotated {seen} times, expected {count}:\n{}", server.log());
        if seen == count {
            return;
        }
        server.assert_alive(&format!("{count} rotations of {name}"));
        assert!(Instant::now() < deadline, "{name}: rotated {seen} times, expected {count}:\n{}", server.log());
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// An echo tenant serving `name` with `pair`, at `address`.
fn echo_tenant(listener: &str, address: &str, name: &str, pair: &Pair) -> String {
    tenant(listener, address, plugins::ECHO, pair, &server_names(&[name]))
}

/// A time `days` from now, to the second (what a certificate holds).
fn days_from_now(days: i64) -> OffsetDateTime {
    let now = OffsetDateTime::now_utc().unix_timestamp();
    OffsetDateTime::from_unix_timestamp(now + days * 86_400).unwrap()
}

#[test]
fn the_admin_api_rotates_for_new_handshakes_and_refuses_what_cannot_serve() {
    let mut pki = Pki::new("rotation CA");
    let (in_30_days, in_60_days) = (days_from_now(30), days_from_now(60));
    let first = pki.server_until(&["rot.test"], in_30_days);
    let second = pki.server_until(&["rot.test"], in_60_days);
    let third = pki.server(&["rot.test"]);
    let expired = pki.expired(&["rot.test"]);
    let other = pki.server(&["other.test"]);
    let files = served_files(&pki, "rot", &first);
    let address = free_address().to_string();
    let config = "workers = 1\n".to_owned()
        + &admin_table("127.0.0.1:0", None)
        + &echo_tenant("rot", &address, "rot.test", &files)
        + &echo_tenant("other", &address, "other.test", &other);
    let server = Server::start(&config);
    let (addr, admin) = (server.addr("rot"), admin_of(&server));
    let expiry = |listener: &str| format!("sandport_tls_certificate_expiry_time_seconds{{listener=\"{listener}\"}}");

    let mut open = TlsClient::connect(addr, &pki.ca, hello("rot.test"));
    assert!(served(&open) == leaf(&first));
    assert_eq!(open.ask("before"), "before");
    let mut neighbour = TlsClient::connect(addr, &pki.ca, hello("other.test"));
    let scrape = Scrape::of(admin);
    assert_eq!(scrape.get(&expiry("rot")), in_30_days.unix_timestamp() as f64, "the first certificate's notAfter");
    let other_expiry = scrape.get(&expiry("other"));

    install(&second, &files);
    assert!(changed(&reload_certificate(admin, "rot")), "the files hold a new certificate");
    assert!(serves(addr, &pki.ca, "rot.test", &second), "a new handshake gets the new certificate");
    assert_eq!(open.ask("after"), "after", "the open connection goes on");
    let scrape = Scrape::of(admin);
    assert_eq!(scrape.get(&expiry("rot")), in_60_days.unix_timestamp() as f64, "the second certificate's notAfter");
    assert_eq!(scrape.get(&expiry("other")), other_expiry, "the neighbour's certificate stays");
    assert!(!changed(&reload_certificate(admin, "rot")), "the same files again change nothing");

    let pem = fs::read(&second.cert).unwrap();
    let unparsable = |files: &Pair| fs::write(&files.cert, &pem[..pem.len() / 2]).unwrap();
    let mismatched = |files: &Pair| fs::copy(&third.cert, &files.cert).map(drop).unwrap();
    let outdated = |files: &Pair| install(&expired, files);
    // What is wrong, how to write it over the files, and the reason it is refused for.
    type Spoiled<'a> = (&'a str, &'a dyn Fn(&Pair), &'a str);
    let bad: [Spoiled; 3] = [
        ("a certificate cut in half", &unparsable, "malformed PEM"),
        ("a certificate for another key", &mismatched, "does not match certificate"),
        ("an expired certificate", &outdated, "expired on"),
    ];
    for (what, write, reason) in bad {
        install(&second, &files);
        write(&files);
        let reply = reload_certificate(admin, "rot");
        assert_eq!(reply.status, 422, "{what}: {}", reply.body);
        let body: serde_json::Value = serde_json::from_str(&reply.body).unwrap();
        let error = body["error"].as_str().unwrap_or_else(|| panic!("{what}: {}", reply.body));
        assert!(error.contains(reason) && error.contains(text(&files.cert)), "{what}: {error}");
        assert!(serves(addr, &pki.ca, "rot.test", &second), "{what}: the old certificate keeps serving");
        assert_eq!(open.ask(what), what, "{what}: the open connection goes on");
    }
    let line = server.wait_for_log(&["the new certificate is refused, the old one keeps serving", "expired on"]);
    assert!(line.contains(text(&files.cert)), "{line}");
    assert_eq!(Scrape::of(admin).get(&expiry("rot")), in_60_days.unix_timestamp() as f64, "still the second");
    assert_eq!(reload_certificate(admin, "nosuch").status, 404);

    install(&first, &files);
    assert!(changed(&reload_certificate(admin, "rot")), "a good certificate after refused ones");
    assert!(serves(addr, &pki.ca, "rot.test", &first));
    assert!(serves(addr, &pki.ca, "other.test", &other), "the neighbour's certificate never changed");
    assert_eq!(neighbour.ask("untouched"), "untouched");
    assert_eq!(rotations(&server, "rot.test"), 2, "{}", server.log());
}

/// A Kubernetes Secret volume at `dir` holding `pair` as `tls.crt` and `tls.key`
/// (each a symlink through `..data` to a timestamped folder); returns the files as a
/// pod sees them.
fn secret(dir: &Path, pair: &Pair) -> Pair {
    fs::create_dir(dir.join("..2026_01_01_a")).unwrap();
    install(pair, &in_folder(&dir.join("..2026_01_01_a")));
    symlink("..2026_01_01_a", dir.join("..data")).unwrap();
    symlink("..data/tls.crt", dir.join("tls.crt")).unwrap();
    symlink("..data/tls.key", dir.join("tls.key")).unwrap();
    in_folder(dir)
}

/// Update the Secret volume at `dir` as the kubelet does: a new timestamped folder,
/// `..data_tmp` pointing to it renamed over `..data`, the old folder removed.
fn flip_secret(dir: &Path, old: &str, new: &str, cert: &Path, key: &Path) {
    fs::create_dir(dir.join(new)).unwrap();
    fs::copy(cert, dir.join(new).join("tls.crt")).unwrap();
    fs::copy(key, dir.join(new).join("tls.key")).unwrap();
    symlink(new, dir.join("..data_tmp")).unwrap();
    fs::rename(dir.join("..data_tmp"), dir.join("..data")).unwrap();
    fs::remove_dir_all(dir.join(old)).unwrap();
}

/// `tls.crt` and `tls.key` in `dir`.
fn in_folder(dir: &Path) -> Pair {
    Pair { cert: dir.join("tls.crt"), key: dir.join("tls.key") }
}

#[test]
fn the_watcher_rotates_rewritten_files_and_a_flipped_secret_and_refuses_what_cannot_serve() {
    let mut pki = Pki::new("rotation CA");
    let (rot_first, rot_second) = (pki.server(&["rot.test"]), pki.server(&["rot.test"]));
    let (secret_first, secret_second) = (pki.server(&["secret.test"]), pki.server(&["secret.test"]));
    let expired = pki.expired(&["rot.test"]);
    let files = served_files(&pki, "rot", &rot_first);
    let volume = tempfile::tempdir().unwrap();
    let mounted = secret(volume.path(), &secret_first);
    let address = free_address().to_string();
    let config = "workers = 1\n".to_owned()
        + &echo_tenant("rot", &address, "rot.test", &files)
        + &echo_tenant("secret", &address, "secret.test", &mounted);
    let server = Server::start(&config);
    let addr = server.addr("rot");
    let mut open_rot = TlsClient::connect(addr, &pki.ca, hello("rot.test"));
    let mut open_secret = TlsClient::connect(addr, &pki.ca, hello("secret.test"));
    assert!(served(&open_rot) == leaf(&rot_first) && served(&open_secret) == leaf(&secret_first));

    install(&rot_second, &files);
    wait_for_rotations(&server, "rot.test", 1);
    assert!(serves(addr, &pki.ca, "rot.test", &rot_second), "rewritten files: new handshakes get them");
    assert_eq!(open_rot.ask("rot goes on"), "rot goes on");
    assert!(serves(addr, &pki.ca, "secret.test", &secret_first), "the other tenant's certificate stays");

    flip_secret(volume.path(), "..2026_01_01_a", "..2026_01_02_b", &secret_second.cert, &secret_second.key);
    wait_for_rotations(&server, "secret.test", 1);
    assert!(serves(addr, &pki.ca, "secret.test", &secret_second), "a flipped Secret: new handshakes get it");
    assert_eq!(open_secret.ask("secret goes on"), "secret goes on");
    assert!(serves(addr, &pki.ca, "rot.test", &rot_second));

    install(&expired, &files);
    let refused = "the new certificate is refused, the old one keeps serving";
    let line = server.wait_for_log(&[refused, "expired on"]);
    assert!(line.contains(text(&files.cert)), "the refusal names the file: {line}");
    assert!(serves(addr, &pki.ca, "rot.test", &rot_second), "an expired certificate is not served");

    // A flip to a certificate with the wrong key: the old one keeps serving.
    flip_secret(volume.path(), "..2026_01_02_b", "..2026_01_03_c", &secret_first.cert, &secret_second.key);
    server.wait_for_log(&[refused, "does not match certificate"]);
    assert!(serves(addr, &pki.ca, "secret.test", &secret_second), "a mismatched pair is not served");
    assert_eq!(open_rot.ask("rot still"), "rot still");
    assert_eq!(open_secret.ask("secret still"), "secret still");
    assert_eq!((rotations(&server, "rot.test"), rotations(&server, "secret.test")), (1, 1), "{}", server.log());
}

#[test]
fn sighup_rotates_rewritten_files_and_new_paths_and_keeps_the_old_certificate_when_refused() {
    let mut pki = Pki::new("rotation CA");
    let (first, second, third) = (pki.server(&["rot.test"]), pki.server(&["rot.test"]), pki.server(&["rot.test"]));
    let expired = pki.expired(&["rot.test"]);
    let other = pki.server(&["other.test"]);
    let files = served_files(&pki, "rot", &first);
    let address = free_address().to_string();
    let config = |rot: &Pair| {
        "workers = 1\n".to_owned()
            + &echo_tenant("rot", &address, "rot.test", rot)
            + &echo_tenant("other", &address, "other.test", &other)
    };
    let server = Server::start(&config(&files));
    let addr = server.addr("rot");
    let mut open = TlsClient::connect(addr, &pki.ca, hello("rot.test"));
    let mut neighbour = TlsClient::connect(addr, &pki.ca, hello("other.test"));

    install(&second, &files);
    server.reload(&config(&files));
    assert!(serves(addr, &pki.ca, "rot.test", &second), "SIGHUP reads the rewritten files");
    assert_eq!(open.ask("after the rewrite"), "after the rewrite");

    server.reload(&config(&third));
    server.wait_for_log(&["TLS settings changed", "rot"]);
    assert!(serves(addr, &pki.ca, "rot.test", &third), "SIGHUP serves the certificate the config now names");
    assert_eq!(open.ask("after the new paths"), "after the new paths");

    server.reload(&config(&expired));
    let line = server.wait_for_log(&["new TLS settings are refused", "expired on"]);
    assert!(line.contains(text(&expired.cert)), "the refusal names the file: {line}");
    assert!(serves(addr, &pki.ca, "rot.test", &third), "the old certificate keeps serving");
    assert_eq!(open.ask("after the refusal"), "after the refusal");
    assert!(serves(addr, &pki.ca, "other.test", &other), "the neighbour's certificate never changed");
    assert_eq!(neighbour.ask("untouched"), "untouched");
}

/// What the handshake thread saw.
#[derive(Default)]
struct Handshakes {
    /// Connections that shook hands and echoed.
    ok: u64,
    /// Why the others failed.
    failures: Vec<String>,
    /// The certificates served.
    seen: HashSet<Vec<u8>>,
}

/// New TLS connections to `addr` in a loop until `stop`, each shaking hands and
/// echoing a line; `done` counts them.
fn shake_hands_until(addr: SocketAddr, ca: &Path, stop: &AtomicBool, done: &AtomicU64) -> Handshakes {
    let mut handshakes = Handshakes::default();
    while !stop.load(Ordering::SeqCst) {
        match TlsClient::try_connect(addr, ca, hello("rot.test")) {
            Ok(mut client) => {
                handshakes.seen.insert(served(&client).to_vec());
                match client.ask("ping") {
                    answer if answer == "ping" => handshakes.ok += 1,
                    answer => handshakes.failures.push(format!("echoed {answer:?}")),
                }
            }
            Err(err) => handshakes.failures.push(err.to_string()),
        }
        done.fetch_add(1, Ordering::SeqCst);
    }
    handshakes
}

#[test]
fn a_thousand_rotations_under_steady_handshakes_fail_none() {
    const ROTATIONS: usize = 1000;
    let mut pki = Pki::new("rotation CA");
    let (a, b) = (pki.server(&["rot.test"]), pki.server(&["rot.test"]));
    let files = served_files(&pki, "rot", &a);
    let address = free_address().to_string();
    let settings = format!("{}\ninstance = \"per-worker\"", server_names(&["rot.test"]));
    let config = "workers = 2\n".to_owned()
        + &admin_table("127.0.0.1:0", None)
        + &tenant("rot", &address, plugins::ECHO, &files, &settings);
    let server = Server::start(&config);
    let (addr, admin) = (server.addr("rot"), admin_of(&server));

    let (stop, done) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicU64::new(0)));
    let load = {
        let (stop, done, ca) = (stop.clone(), done.clone(), pki.ca.clone());
        std::thread::spawn(move || shake_hands_until(addr, &ca, &stop, &done))
    };
    let mut refused = None;
    let mut last = 0;
    for rotation in 0..ROTATIONS {
        install(if rotation % 2 == 0 { &b } else { &a }, &files);
        let reply = reload_certificate(admin, "rot");
        if reply.status != 200 {
            refused = Some(format!("rotation {rotation}: {} {}", reply.status, reply.body));
            break;
        }
        // Every ten rotations, wait for a handshake to end: the rotations are spread
        // over the handshakes, however slow the machine.
        if rotation % 10 == 9 {
            let deadline = Instant::now() + PATIENCE;
            while done.load(Ordering::SeqCst) == last && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(1));
            }
            last = done.load(Ordering::SeqCst);
        }
    }
    stop.store(true, Ordering::SeqCst);
    let handshakes = load.join().unwrap();
    assert_eq!(refused, None, "every rotation is taken");
    assert!(
        handshakes.failures.is_empty(),
        "{} of {} handshakes failed: {:?}",
        handshakes.failures.len(),
        handshakes.ok as usize + handshakes.failures.len(),
        &handshakes.failures[..handshakes.failures.len().min(5)]
    );
    assert!(handshakes.ok >= (ROTATIONS / 10) as u64, "handshakes throughout: {}", handshakes.ok);
    assert_eq!(handshakes.seen, HashSet::from([leaf(&a).to_vec(), leaf(&b).to_vec()]), "both certificates served");
    wait_for_rotations(&server, "rot.test", ROTATIONS);
    assert!(serves(addr, &pki.ca, "rot.test", &a), "the last rotation's certificate serves");

    let handshake = |result: &str| format!("sandport_tls_handshakes_total{{listener=\"rot\",result=\"{result}\"}}");
    let scrape = wait_for_sample(admin, &handshake("ok"), (handshakes.ok + 1) as f64);
    assert_eq!(scrape.get(&handshake("failed")), 0.0);
    assert_eq!(scrape.get(&handshake("timeout")), 0.0);
    // A handshake takes a signature and the client's answer: none is quicker than the
    // lowest bucket (5 µs), as a clock read only once per turn of the loop would count it.
    let (bound, quickest) = scrape.first_bucket("sandport_tls_handshake_time_seconds", "rot");
    assert_eq!(quickest, 0.0, "handshakes counted as taking less than {bound} s");
}
