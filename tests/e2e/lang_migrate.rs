//! Live migration of the echoes and chats written in other languages than Rust: each is
//! swapped to a copy of itself while clients use it, and every connection must move to
//! the new instance (not drain) without the clients losing a byte or a member.
//!
//! The helpers at the top take a component (or a language) and hold for any of them;
//! each language's tests are in a section of their own below.
//!
//! Their components take seconds to compile: each is built once and compiled into the
//! suite's cache before a server needs it, and a swap to a copy of the same file (a new
//! version to the server, the same hash to the cache) loads it from there.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use crate::admin::{Admin, admin_table};
use crate::echo::pattern;
use crate::harness::{
    BIG_SEND_BUFFER, Client, MORE_THAN_THE_KERNEL_HOLDS, PATIENCE, Server, listener, plugins, sandport, stalls_at,
    totals,
};

/// Clients streaming through the echo across the swap.
const STREAMS: usize = 4;
/// Bytes each stream writes at a time.
const PIECE: usize = 16 * 1024;
/// How far each stream gets before the swap, and again after it.
const STRIDE: u64 = 256 * 1024;

/// `plugins/LANG/NAME` built with its `make`.
fn repo_plugin(lang: &str, name: &str) -> PathBuf {
    let folder = Path::new(plugins::WORKSPACE).join("plugins").join(lang).join(name);
    plugins::make(&folder, name).unwrap_or_else(|e| panic!("{lang} {name}: {e}"))
}

/// What `sandport new --lang LANG` makes, built with its `make` (in `dir`).
fn scaffolded(lang: &str, dir: &Path) -> PathBuf {
    let name = format!("migrating-{lang}");
    let output = sandport().current_dir(dir).args(["new", "--lang", lang, &name]).output().unwrap();
    assert!(output.status.success(), "sandport new --lang {lang}: {}", String::from_utf8_lossy(&output.stderr));
    plugins::make(&dir.join(&name), &name).unwrap_or_else(|e| panic!("the {lang} scaffold: {e}"))
}

/// `wasm`, checked to migrate and compiled into the suite's cache (a server would
/// otherwise compile it at start, for longer than it is given to start), and a copy of
/// it in `dir`: another file of the same component, a new version to the server.
fn migrating_pair(wasm: &Path, dir: &Path) -> (String, String) {
    let output = sandport().arg("check").arg(wasm).output().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "sandport check {}: {}", wasm.display(), String::from_utf8_lossy(&output.stderr));
    assert!(stdout.lines().any(|line| line == "live migration: migrates open connections"), "{stdout}");
    let next = dir.join("next.wasm");
    std::fs::copy(wasm, &next).unwrap();
    let path = |p: &Path| p.to_str().expect("UTF-8 path").to_owned();
    (path(wasm), path(&next))
}

/// Byte `i` of stream `seed`: position-dependent, so a byte lost, doubled or moved shows.
fn stream_byte(i: u64, seed: u32) -> u8 {
    ((i as u32).wrapping_mul(2654435761).wrapping_add(seed) >> 13) as u8
}

/// One client streaming through an echo: a writer that goes on until `stop`, then
/// half-closes, and a reader that checks every byte that comes back, in order, until
/// the end of stream.
struct Stream {
    echoed: Arc<AtomicU64>,
    writer: std::thread::JoinHandle<u64>,
    reader: std::thread::JoinHandle<u64>,
}

impl Stream {
    fn start(address: SocketAddr, seed: u32, stop: &Arc<AtomicBool>) -> Stream {
        let client = Client::connect(address);
        let mut out = client.stream().try_clone().unwrap();
        let stop = Arc::clone(stop);
        let writer = std::thread::spawn(move || {
            let mut sent = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let piece: Vec<u8> = (sent..sent + PIECE as u64).map(|i| stream_byte(i, seed)).collect();
                std::io::Write::write_all(&mut out, &piece).unwrap();
                sent += PIECE as u64;
                // A stream, not a flood: the swap finds bytes in flight, and the
                // Python echo's few hundred bytes leaked per event stay far from its
                // memory limit.
                std::thread::sleep(std::time::Duration::from_millis(2));
            }
            out.shutdown(std::net::Shutdown::Write).unwrap();
            sent
        });
        let echoed = Arc::new(AtomicU64::new(0));
        let progress = Arc::clone(&echoed);
        let mut input = client.stream().try_clone().unwrap();
        let reader = std::thread::spawn(move || {
            let _client = client;
            let mut got = 0u64;
            let mut buffer = vec![0u8; 64 * 1024];
            loop {
                let n = std::io::Read::read(&mut input, &mut buffer).unwrap();
                if n == 0 {
                    return got;
                }
                for (offset, &byte) in buffer[..n].iter().enumerate() {
                    let at = got + offset as u64;
                    assert_eq!(byte, stream_byte(at, seed), "stream {seed}: byte {at} is not the one sent there");
                }
                got += n as u64;
                progress.store(got, Ordering::Relaxed);
            }
        });
        Stream { echoed, writer, reader }
    }

    /// Wait until this stream has had `bytes` echoed.
    fn wait_for(&self, bytes: u64, server: &Server) {
        let deadline = Instant::now() + PATIENCE;
        while self.echoed.load(Ordering::Relaxed) < bytes {
            server.assert_alive("an echo stream");
            assert!(Instant::now() < deadline, "{} of {bytes} bytes echoed", self.echoed.load(Ordering::Relaxed));
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
    }
}

/// The echo `echo` swapped to a copy of itself by SIGHUP while STREAMS clients stream
/// through it: every connection is reported migrated, none draining, and each gets
/// back exactly what it sent, in order, before and after the swap.
fn echo_swaps_and_migrates(echo: &Path) {
    let dir = tempfile::tempdir().unwrap();
    let (old, new) = migrating_pair(echo, dir.path());
    let config = |plugin: &str| listener("echo", plugin, "");
    let server = Server::start(&config(&old));
    let stop = Arc::new(AtomicBool::new(false));
    let streams: Vec<Stream> =
        (0..STREAMS as u32).map(|seed| Stream::start(server.addr("echo"), seed, &stop)).collect();
    for stream in &streams {
        stream.wait_for(STRIDE, &server);
    }
    server.reload(&config(&new));
    let took_over = server.wait_for_log(&["version 2 took over", "listener=echo"]);
    assert!(took_over.contains(&format!("migrated={STREAMS}")) && took_over.contains("draining=0"), "{took_over}");
    // Each stream goes on through the new instance.
    for stream in &streams {
        stream.wait_for(stream.echoed.load(Ordering::Relaxed) + STRIDE, &server);
    }
    stop.store(true, Ordering::Relaxed);
    for (seed, stream) in streams.into_iter().enumerate() {
        let sent = stream.writer.join().expect("the stream was written");
        let echoed = stream.reader.join().expect("every byte echoed was the one sent there");
        assert_eq!(echoed, sent, "stream {seed}: bytes sent and bytes echoed before the end of stream");
    }
    let (_, log) = server.terminate();
    let echo = totals(&log, "echo");
    assert!(echo.contains(&format!("migrated={STREAMS}")) && echo.contains("faults=0"), "{echo}");
}

/// The echo `echo` swapped to a copy of itself while a client that stopped reading
/// holds it up (its send buffer full, the rest of what it sent in its receive buffer
/// and the sockets'): the connection moves waiting for room, and once the client reads
/// again every byte comes back, then the end of stream.
fn echo_moves_a_blocked_connection(echo: &Path) {
    let dir = tempfile::tempdir().unwrap();
    let (old, new) = migrating_pair(echo, dir.path());
    let limits = "[listener.limits]\nrecv-buffer = \"64 KiB\"\nsend-buffer = \"64 KiB\"";
    let config = |plugin: &str| listener("echo", plugin, limits);
    let server = Server::start(&config(&old));
    let mut client = server.connect("echo");
    let payload = pattern(MORE_THAN_THE_KERNEL_HOLDS, 11);
    let written = AtomicUsize::new(0);
    std::thread::scope(|s| {
        let mut writer = client.stream().try_clone().unwrap();
        let (payload, written) = (&payload, &written);
        s.spawn(move || {
            for piece in payload.chunks(64 * 1024) {
                std::io::Write::write_all(&mut writer, piece).unwrap();
                written.fetch_add(piece.len(), Ordering::SeqCst);
            }
            writer.shutdown(std::net::Shutdown::Write).unwrap();
        });
        let stalled = stalls_at(written);
        assert!(stalled < payload.len(), "the echo took all {stalled} bytes from a client that does not read");
        server.reload(&config(&new));
        let took_over = server.wait_for_log(&["version 2 took over", "listener=echo"]);
        assert!(took_over.contains("migrated=1") && took_over.contains("draining=0"), "{took_over}");
        let back = client.until_eof();
        assert!(back == *payload, "{} bytes came back for {} sent, or altered", back.len(), payload.len());
    });
}

/// A member of a chat room: its connection and the name it was welcomed with.
struct Member {
    client: Client,
    name: String,
}

impl Member {
    /// Whether the next line is `line`.
    fn expect(&mut self, line: &str) {
        assert_eq!(self.client.line(), line, "what {} got", self.name);
    }
}

/// A newcomer to the chat at `address`; each member of `room` reads its join.
fn join(address: SocketAddr, room: &mut [Member]) -> Member {
    let mut client = Client::connect(address);
    let line = client.line();
    let name = line.strip_prefix("* welcome ").unwrap_or_else(|| panic!("not a welcome: {line:?}")).to_owned();
    for member in room.iter_mut() {
        member.expect(&format!("* {name} joined"));
    }
    Member { client, name }
}

/// `room[from]` says `text`; every other member gets it as `NAME: text`.
fn say(room: &mut [Member], from: usize, text: &str) {
    room[from].client.send_line(text);
    let expected = format!("{}: {text}", room[from].name);
    for (i, member) in room.iter_mut().enumerate() {
        if i != from {
            member.expect(&expected);
        }
    }
}

/// The chat `chat` swapped to a copy of itself by SIGHUP while three members are in
/// the room, one with a `/timer` armed and one halfway through a line: each stays
/// connected and is told it kept its name, no one hears of a leave or a join, the half
/// line completes, a line after the swap and a newcomer reach everyone, and the timer
/// fires in the new instance.
fn chat_swaps_and_migrates(chat: &Path) {
    /// Long enough to outlast the swap (a cache load), short enough to wait for.
    const TIMER_MS: u64 = 4000;
    let dir = tempfile::tempdir().unwrap();
    let (old, new) = migrating_pair(chat, dir.path());
    let config = |plugin: &str| listener("chat", plugin, "");
    let server = Server::start(&config(&old));
    let mut room: Vec<Member> = Vec::new();
    for _ in 0..3 {
        let member = join(server.addr("chat"), &mut room);
        room.push(member);
    }
    say(&mut room, 0, "before the swap");
    assert_eq!(room[0].client.ask(&format!("/timer 7 {TIMER_MS}")), "* timer 7 armed");
    room[1].client.write(b"half of a ");

    server.reload(&config(&new));
    let took_over = server.wait_for_log(&["version 2 took over", "listener=chat"]);
    assert!(took_over.contains("migrated=3") && took_over.contains("draining=0"), "{took_over}");
    // The first line after the swap is the notice (the timer has not fired yet).
    for member in &mut room {
        let name = member.name.clone();
        member.expect(&format!("* chat took over, you are still {name}"));
    }
    room[1].client.write(b"line\n");
    let half = format!("{}: half of a line", room[1].name);
    room[0].expect(&half);
    room[2].expect(&half);
    say(&mut room, 2, "after the swap");
    let newcomer = join(server.addr("chat"), &mut room);
    room.push(newcomer);
    say(&mut room, 3, "hello, migrated room");
    room[0].expect("* timer 7 fired");
    for member in &mut room {
        assert!(member.client.quiet_for(std::time::Duration::from_millis(100)), "{} got more", member.name);
    }
    drop(room);
    let (_, log) = server.terminate();
    let chat = totals(&log, "chat");
    assert!(chat.contains("migrated=3") && chat.contains("faults=0"), "{chat}");
}

// ---- Python: plugins/python/echo, plugins/python/chat and `sandport new --lang python`.

#[test]
fn python_echo_swaps_and_migrates() {
    echo_swaps_and_migrates(&repo_plugin("python", "echo"));
}

#[test]
fn python_echo_moves_a_blocked_connection() {
    echo_moves_a_blocked_connection(&repo_plugin("python", "echo"));
}

#[test]
fn python_chat_swaps_and_migrates() {
    chat_swaps_and_migrates(&repo_plugin("python", "chat"));
}

#[test]
fn python_scaffold_swaps_and_migrates() {
    let dir = tempfile::tempdir().unwrap();
    echo_swaps_and_migrates(&scaffolded("python", dir.path()));
}

// ---- JavaScript (plugins/js) ----

/// The JavaScript plugin `name` (`plugins/js/NAME`), built and compiled once per run
/// (see [`js_built`]).
fn js_component(name: &str) -> PathBuf {
    js_built(&Path::new(plugins::WORKSPACE).join("plugins").join("js").join(name), name)
}

/// The plugin `name` of `folder`, built with its `make` and compiled into the suite's
/// cache by `sandport check`, which must say it migrates; once per run.
fn js_built(folder: &Path, name: &str) -> PathBuf {
    static READY: Mutex<BTreeMap<PathBuf, PathBuf>> = Mutex::new(BTreeMap::new());
    let mut ready = READY.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    ready
        .entry(folder.to_path_buf())
        .or_insert_with(|| {
            let wasm = plugins::make(folder, name).unwrap_or_else(|e| panic!("{}: {e}", folder.display()));
            let output = sandport().arg("check").arg(&wasm).output().unwrap();
            let (said, stdout) = (String::from_utf8_lossy(&output.stderr), String::from_utf8_lossy(&output.stdout));
            assert!(output.status.success(), "sandport check {}: {said}", wasm.display());
            let migrates = stdout.lines().any(|l| l == "live migration: migrates open connections");
            assert!(migrates, "{}: {stdout}", wasm.display());
            wasm
        })
        .clone()
}

/// A copy of `wasm` in `dir`: another file, so a new version to the server.
fn js_copy(wasm: &Path, dir: &Path) -> String {
    let copy = dir.join(format!("next-{}", wasm.file_name().unwrap().to_str().unwrap()));
    std::fs::copy(wasm, &copy).unwrap();
    copy.to_str().expect("UTF-8 path").to_owned()
}

/// Swap listener `name` of `server`, started with `config` of its first version, to
/// `next` by a reload, and check that it took over as version 2 (a version refused
/// before takes no number), moved `moved` connections and drained none.
fn js_swap(server: &Server, config: impl Fn(&str) -> String, name: &str, next: &str, moved: usize) {
    server.reload(&config(next));
    let took_over = server.wait_for_log(&["version 2 took over", &format!("listener={name}")]);
    assert!(
        took_over.contains(&format!("migrated={moved}")) && took_over.contains("draining=0"),
        "every connection moves, none drains: {took_over}"
    );
}

/// Streaming clients of the JavaScript echo.
const JS_STREAMERS: usize = 3;
/// What each streaming client sends before the swap, and again after it.
const JS_HALF: usize = 4 << 20;

/// Four clients of the JavaScript echo when it is swapped to itself: three in the middle
/// of a stream, with part of their echo unread (so bytes wait for room in the host),
/// and one that has sent everything and half-closed while most of its echo still
/// waits in the receive buffer. All four move; each gets every byte back, in order,
/// once, then end of stream.
#[test]
fn js_echo_swapped_to_itself_moves_every_stream() {
    let echo = js_component("echo");
    let dir = tempfile::tempdir().unwrap();
    let next = js_copy(&echo, dir.path());
    // A receive buffer that takes the half-closing client's whole payload, so that the
    // old instance sees its end of stream while the echo waits; a small send buffer, so
    // that what the clients do not read waits in the receive buffers.
    let limits = format!("[listener.limits]\nrecv-buffer = {BIG_SEND_BUFFER}\nsend-buffer = \"64 KiB\"");
    let config = |plugin: &str| format!("{}{}", admin_table("127.0.0.1:0", None), listener("echo", plugin, &limits));
    let server = Server::start(&config(echo.to_str().unwrap()));
    let admin = Admin::of(&server, None);

    let swapped = AtomicBool::new(false);
    let payloads: Vec<Vec<u8>> = (0..JS_STREAMERS as u32).map(|seed| pattern(2 * JS_HALF, seed)).collect();
    let ender_payload = pattern(MORE_THAN_THE_KERNEL_HOLDS, 99);
    thread::scope(|s| {
        let mut sent_before = Vec::new();
        let streams: Vec<_> = payloads
            .iter()
            .enumerate()
            .map(|(c, payload)| {
                let client = Client::connect_with_small_window(server.addr("echo"));
                let (before, after) = payload.split_at(JS_HALF);
                let mut writer = client.stream().try_clone().unwrap();
                let (first_half_sent, swapped) = (std::sync::Arc::new(AtomicBool::new(false)), &swapped);
                sent_before.push(first_half_sent.clone());
                let writing = s.spawn(move || {
                    writer.write_all(before).unwrap();
                    first_half_sent.store(true, Ordering::SeqCst);
                    js_wait_for(swapped, "the swap");
                    writer.write_all(after).unwrap();
                    writer.shutdown(Shutdown::Write).unwrap();
                });
                let reading = s.spawn(move || {
                    // Half of the first half, then nothing until the swap is over.
                    let mut back = vec![0u8; JS_HALF / 2];
                    let mut stream = client.stream();
                    stream.read_exact(&mut back).unwrap();
                    js_wait_for(swapped, "the swap");
                    let mut client = client;
                    back.extend(client.until_eof());
                    assert!(
                        back == *payload,
                        "client {c}: {} bytes back for {} sent, or altered",
                        back.len(),
                        payload.len()
                    );
                });
                (writing, reading)
            })
            .collect();

        // The half-closing client: it reads nothing before the swap.
        let mut ender = Client::connect_with_small_window(server.addr("echo"));
        let mut writer = ender.stream().try_clone().unwrap();
        writer.write_all(&ender_payload).unwrap();
        writer.shutdown(Shutdown::Write).unwrap();
        for flag in &sent_before {
            js_wait_for(flag, "a first half sent");
        }
        // Everything sent before the swap has reached the host, so its end of stream has
        // too, or is about to: the old instance knows the half-closing client finished.
        let expected = (JS_STREAMERS * JS_HALF + MORE_THAN_THE_KERNEL_HOLDS) as f64;
        let bytes_in = r#"sandport_bytes_in_total{listener="echo"}"#;
        let deadline = Instant::now() + PATIENCE;
        while admin.metrics().get(bytes_in) < expected {
            assert!(Instant::now() < deadline, "the host never read what the clients sent before the swap");
            thread::sleep(Duration::from_millis(20));
        }

        js_swap(&server, config, "echo", &next, JS_STREAMERS + 1);
        swapped.store(true, Ordering::SeqCst);
        let back = ender.until_eof();
        assert!(
            back == ender_payload,
            "the half-closed client: {} bytes back for {}, or altered",
            back.len(),
            ender_payload.len()
        );
        for (writing, reading) in streams {
            writing.join().expect("a streaming client's writer");
            reading.join().expect("a streaming client got its own bytes back");
        }
    });
    drop(admin);
    let (_, log) = server.terminate();
    let echo = totals(&log, "echo");
    assert!(echo.contains(&format!("migrated={}", JS_STREAMERS + 1)) && echo.contains("faults=0"), "{echo}");
}

/// Wait until `flag` is set; fails after [`PATIENCE`].
fn js_wait_for(flag: &AtomicBool, what: &str) {
    let deadline = Instant::now() + PATIENCE;
    while !flag.load(Ordering::SeqCst) {
        assert!(Instant::now() < deadline, "waited in vain for {what}");
        thread::sleep(Duration::from_millis(5));
    }
}

/// Lines a member sends in a burst over the swap.
const JS_BURST: usize = 100_000;

/// The JavaScript chat swapped (to a copy of itself) while three members are in it and
/// one of them is in the middle of a burst of lines: the burst goes on to its end, the
/// members stay connected under their names without being told anything, a line after
/// the swap reaches the others, a newcomer joins the same room, and the timers armed
/// before the swap fire (or were cancelled) as armed.
#[test]
fn js_chat_swapped_keeps_its_members_names_and_timers() {
    let chat = js_component("chat");
    let dir = tempfile::tempdir().unwrap();
    let next = js_copy(&chat, dir.path());
    let config = |plugin: &str| listener("chat", plugin, "");
    let server = Server::start(&config(chat.to_str().unwrap()));
    let mut room: Vec<Member> = Vec::new();
    for _ in 0..3 {
        let member = join(server.addr("chat"), &mut room);
        room.push(member);
    }
    say(&mut room, 0, "before the swap");
    // Long enough to be armed still when the swap is over, on any machine.
    assert_eq!(room[0].client.ask("/timer 5 3000"), "* timer 5 armed");
    assert_eq!(room[1].client.ask("/timer 6 600000"), "* timer 6 armed");

    // Member 0 sends a burst that takes the chat a good while (it reads a bounded share
    // per event, then goes on from its timer); the swap comes in the middle of it.
    let burst = format!("{}done\n", "x\n".repeat(JS_BURST));
    room[0].client.write(burst.as_bytes());
    thread::scope(|s| {
        let sender = room[0].name.clone();
        let readers: Vec<_> = room[1..]
            .iter_mut()
            .map(|member| {
                let sender = sender.clone();
                s.spawn(move || {
                    let (relayed, done) = (format!("{sender}: x"), format!("{sender}: done"));
                    let mut got = 0;
                    loop {
                        let line = member.client.line();
                        if line == done {
                            return got;
                        }
                        assert_eq!(line, relayed, "what {} got", member.name);
                        got += 1;
                    }
                })
            })
            .collect();
        js_swap(&server, config, "chat", &next, 3);
        for reader in readers {
            let got = reader.join().expect("the burst's lines, in order, to its end");
            assert!(got > 0, "no line of the burst arrived");
        }
    });
    // Member 0 has been sent nothing since: its timer's line is the next it reads.
    assert_eq!(room[0].client.line(), "* timer 5 fired");

    // The same room, under the same names, and nothing said about the move.
    for from in 0..room.len() {
        say(&mut room, from, &format!("after the swap, from {from}"));
    }
    let newcomer = join(server.addr("chat"), &mut room);
    room.push(newcomer);
    say(&mut room, 3, "hello room");
    // The other timer armed before the swap is still there to cancel.
    assert_eq!(room[1].client.ask("/cancel 6"), "* timer 6 cancelled");
    for member in &mut room {
        assert!(member.client.quiet_for(Duration::from_millis(100)), "{} got more than expected", member.name);
    }
    let (_, log) = server.terminate();
    let chat = totals(&log, "chat");
    assert!(chat.contains("migrated=3") && chat.contains("faults=0"), "{chat}");
}

/// What `sandport new --lang js` makes migrates as it is: its echo, swapped with a client
/// connected, moves the client, which goes on being echoed.
#[test]
fn js_scaffold_migrates_out_of_the_box() {
    let dir = tempfile::tempdir().unwrap();
    let output = sandport().current_dir(dir.path()).args(["new", "--lang", "js", "mine"]).output().unwrap();
    assert!(output.status.success(), "sandport new: {}", String::from_utf8_lossy(&output.stderr));
    let mine = js_built(&dir.path().join("mine"), "mine");
    let next = js_copy(&mine, dir.path());
    let config = |plugin: &str| listener("mine", plugin, "[listener.config]\ngreeting = \"hello\"");
    let server = Server::start(&config(mine.to_str().unwrap()));
    let mut client = server.connect("mine");
    assert_eq!(client.line(), "hello");
    assert_eq!(client.ask("before the swap"), "before the swap");
    js_swap(&server, config, "mine", &next, 1);
    // The same connection, echoed by the new instance, and not greeted again.
    assert_eq!(client.ask("after the swap"), "after the swap");
    drop(client);
    let (_, log) = server.terminate();
    let mine = totals(&log, "mine");
    assert!(mine.contains("migrated=1") && mine.contains("faults=0"), "{mine}");
}

/// Clients of the JavaScript echo.
const JS_LOADED: usize = 4;

/// A migration away from the JavaScript echo called off half-way (the new version traps
/// in its third `take-over`) leaves it serving all four clients under load as if nothing
/// had happened, for its hand-over only read; and the same four move whole at the next
/// swap.
#[test]
fn js_echo_serves_on_when_its_migration_is_called_off() {
    let echo = js_component("echo");
    let dir = tempfile::tempdir().unwrap();
    let next = js_copy(&echo, dir.path());
    let config = |plugin: &str| format!("workers = 1\n{}", listener("echo", plugin, ""));
    let server = Server::start(&config(echo.to_str().unwrap()));
    let stop = AtomicBool::new(false);
    let mut clients: Vec<Client> = thread::scope(|s| {
        let load: Vec<_> = (0..JS_LOADED)
            .map(|c| {
                let (mut client, stop) = (server.connect("echo"), &stop);
                s.spawn(move || {
                    let mut trips = 0;
                    while trips < 10 || !stop.load(Ordering::SeqCst) {
                        let line = format!("client {c} line {trips}");
                        assert_eq!(client.ask(&line), line, "client {c}: an answer other than the echo");
                        trips += 1;
                    }
                    client
                })
            })
            .collect();
        let faulty = listener("echo", plugins::FIXTURE_MIGRATE_FAULTS, "[listener.config]\ntake-over = \"trap at 3\"");
        server.reload(&format!("workers = 1\n{faulty}"));
        server.wait_for_log(&["migration to version 2 was called off", "trapped in take-over"]);
        server.wait_for_log(&["new version refused, the old one goes on serving", "listener=echo"]);
        stop.store(true, Ordering::SeqCst);
        load.into_iter().map(|client| client.join().expect("every echo under load was the client's own line")).collect()
    });
    for client in &mut clients {
        assert!(client.quiet_for(Duration::from_millis(50)), "a client got a line nobody asked for");
    }
    js_swap(&server, config, "echo", &next, JS_LOADED);
    for (c, client) in clients.iter_mut().enumerate() {
        let line = format!("client {c}, moved");
        assert_eq!(client.ask(&line), line);
    }
    drop(clients);
    let (_, log) = server.terminate();
    let echo = totals(&log, "echo");
    assert!(echo.contains(&format!("migrated={JS_LOADED}")) && echo.contains("faults=0"), "{echo}");
}
