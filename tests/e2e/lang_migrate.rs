//! Live migration of the echoes and chats written in other languages than Rust: each is
//! swapped to a copy of itself while clients use it, and every connection must move to
//! the new instance (not drain) without the clients losing a byte or a member.
//!
//! The helpers at the top take a component (or a language) and hold for any of them;
//! each language's tests are in a section of their own below.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::Instant;

use crate::echo::pattern;
use crate::harness::{
    Client, MORE_THAN_THE_KERNEL_HOLDS, PATIENCE, Server, listener, plugins, sandport, stalls_at, totals,
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
