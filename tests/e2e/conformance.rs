//! The conformance suite: the echo and chat behaviours of `plugins/CONFORMANCE.md`,
//! checked through the real server against the plugins of every language.
//!
//! One definition: each behaviour is a function of the component under test, written
//! once below, and the `rows!` of the `echo` and `chat` modules make a test of every
//! behaviour for every row. A new language is a new row, not new tests; so is a
//! scaffold of `sandport new`, which must pass the echo's behaviours out of the box.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::thread;
use std::time::Duration;

use crate::echo::{pattern, round_trip};
use crate::harness::{Client, Server, listener, plugins, sandport};

/// Where a row's component comes from.
#[derive(Debug, Clone, Copy)]
enum Source {
    /// `plugins/LANG/NAME`, the language's own plugin (Rust's from the artifacts).
    Repo(&'static str),
    /// What `sandport new --lang LANG` makes, built with its own command.
    Scaffold(&'static str),
}

impl Source {
    /// The path of the component for plugin `name`, built (and compiled into the
    /// suite's cache) on first use.
    fn plugin(self, name: &str) -> String {
        let wasm = match self {
            Source::Repo("rust") => PathBuf::from(if name == "echo" { plugins::ECHO } else { plugins::CHAT }),
            Source::Repo(lang) => {
                let folder = Path::new(plugins::WORKSPACE).join("plugins").join(lang).join(name);
                plugins::make(&folder, name).unwrap_or_else(|e| panic!("{lang} {name}: {e}"))
            }
            Source::Scaffold(lang) => scaffold(lang),
        };
        warm(&wasm);
        wasm.to_str().expect("UTF-8 path").to_owned()
    }
}

/// Scaffolds `conformant-LANG` with `sandport new` in a fresh folder, once per run,
/// and builds it with `make`, the command the scaffold's README gives.
fn scaffold(lang: &'static str) -> PathBuf {
    static DIR: std::sync::OnceLock<tempfile::TempDir> = std::sync::OnceLock::new();
    static MADE: Mutex<BTreeSet<&str>> = Mutex::new(BTreeSet::new());
    let dir = DIR.get_or_init(|| tempfile::tempdir().unwrap()).path();
    let name = format!("conformant-{lang}");
    let folder = dir.join(&name);
    {
        let mut made = MADE.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if made.insert(lang) {
            let output = sandport().current_dir(dir).args(["new", "--lang", lang, &name]).output().unwrap();
            let said = String::from_utf8_lossy(&output.stderr);
            assert!(output.status.success(), "sandport new --lang {lang} {name} failed: {said}");
        }
    }
    plugins::make(&folder, &name).unwrap_or_else(|e| panic!("the {lang} scaffold: {e}"))
}

/// Compile `wasm` into the suite's cache before any server needs it: a Python or
/// JavaScript component takes seconds to compile, and tests starting together would
/// otherwise each compile it. `sandport check` fills the same cache a server reads.
pub(crate) fn warm(wasm: &Path) {
    static WARM: Mutex<BTreeSet<PathBuf>> = Mutex::new(BTreeSet::new());
    let mut warm = WARM.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    if warm.insert(wasm.to_path_buf()) {
        let output = sandport().arg("check").arg(wasm).output().unwrap();
        let said = String::from_utf8_lossy(&output.stderr);
        assert!(output.status.success(), "sandport check {} failed: {said}", wasm.display());
    }
}

/// The C bindings (which the Zig plugins use too) are committed, because building
/// `wit-bindgen` takes minutes; they must be those of the WIT as it is.
#[test]
fn c_bindings_are_current() {
    let output = std::process::Command::new("sha256sum")
        .args(["--check", "--quiet", "plugins/c/bindings/WIT.sha256"])
        .current_dir(plugins::WORKSPACE)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "wit/handler.wit changed since the C bindings were generated: run `make -C plugins/c/bindings` \
         (needs wit-bindgen 0.63.0: `cargo install wit-bindgen-cli --version 0.63.0`) and commit them\n{}",
        String::from_utf8_lossy(&output.stdout)
    );
}

/// One test per behaviour (the functions in brackets) for every row.
macro_rules! rows {
    ($plugin:literal: $behaviours:tt for $($row:ident = $source:expr),* $(,)?) => {
        $( row!($plugin, $row, $source, $behaviours); )*
    };
}

/// The tests of one row: a module named for the row, a test named for each behaviour.
macro_rules! row {
    ($plugin:literal, $row:ident, $source:expr, [$($behaviour:ident),* $(,)?]) => {
        mod $row {
            use super::*;
            $(
                #[test]
                fn $behaviour() {
                    super::$behaviour(&Source::plugin($source, $plugin));
                }
            )*
        }
    };
}

/// The echo behaviours.
mod echo {
    use super::*;

    rows! {
        "echo": [
            bytes_in_order, backpressure, end_of_stream, greeting, per_connection, fault_is_contained,
            restart_and_swap_load_from_the_cache,
        ]
        for rust = Source::Repo("rust"),
            c = Source::Repo("c"),
            zig = Source::Repo("zig"),
            python = Source::Repo("python"),
            js = Source::Repo("js"),
            new_rust = Source::Scaffold("rust"),
            new_c = Source::Scaffold("c"),
            new_zig = Source::Scaffold("zig"),
            new_python = Source::Scaffold("python"),
            new_js = Source::Scaffold("js"),
    }

    fn serve(echo: &str, extra: &str) -> Server {
        Server::start(&listener("echo", echo, extra))
    }

    /// Several clients at once get their own bytes back, in order, whatever the
    /// sizes in which they are written and read.
    fn bytes_in_order(echo: &str) {
        let server = serve(echo, "");
        let mut one = server.connect("echo");
        one.write(b"x");
        assert_eq!(one.bytes(1), b"x");
        thread::scope(|s| {
            for seed in 0..3 {
                let client = server.connect("echo");
                s.spawn(move || {
                    let payload = pattern(2 << 20, seed);
                    assert!(round_trip(&client, &payload) == payload, "client {seed}: 2 MiB came back altered");
                });
            }
        });
    }

    /// 64 MiB through a 64 KiB send buffer: only what fits moves, the rest waits in
    /// the receive buffer for the next event.
    fn backpressure(echo: &str) {
        let server = serve(echo, "[listener.limits]\nsend-buffer = \"64 KiB\"\nrecv-buffer = \"64 KiB\"");
        let client = server.connect("echo");
        let payload = pattern(64 << 20, 7);
        assert!(round_trip(&client, &payload) == payload, "64 MiB came back altered");
    }

    /// After a half-close the client still gets everything, then end of stream, even
    /// when most of it waited for room in the send buffer.
    fn end_of_stream(echo: &str) {
        let server = serve(echo, "[listener.limits]\nsend-buffer = \"64 KiB\"");
        let mut client = server.connect("echo");
        let payload = pattern(1 << 20, 9);
        let mut writer = client.stream().try_clone().unwrap();
        let sent = payload.clone();
        let writing = thread::spawn(move || {
            std::io::Write::write_all(&mut writer, &sent).unwrap();
            writer.shutdown(std::net::Shutdown::Write).unwrap();
        });
        let back = client.until_eof();
        writing.join().unwrap();
        assert!(back == payload, "{} bytes came back for {} sent, or altered", back.len(), payload.len());
    }

    /// The `greeting` config value comes first; without one, accept sends nothing.
    fn greeting(echo: &str) {
        let server = serve(echo, "[listener.config]\ngreeting = \"hello from the suite\"");
        let mut client = server.connect("echo");
        assert_eq!(client.line(), "hello from the suite");
        assert_eq!(client.ask("ping"), "ping");

        let server = serve(echo, "");
        let mut client = server.connect("echo");
        assert!(client.quiet_for(Duration::from_millis(300)), "sent something on accept without a greeting");
        assert_eq!(client.ask("ping"), "ping");
    }

    /// An instance per connection serves clients side by side.
    fn per_connection(echo: &str) {
        let server = serve(echo, "instance = \"per-connection\"");
        thread::scope(|s| {
            for seed in 0..4 {
                let client = server.connect("echo");
                s.spawn(move || {
                    let payload = pattern(256 << 10, seed);
                    assert!(round_trip(&client, &payload) == payload, "client {seed}: 256 KiB came back altered");
                });
            }
        });
    }

    /// The fault trigger traps; the host ends that connection and logs the fault,
    /// and the other connections and new ones are served as before.
    fn fault_is_contained(echo: &str) {
        let server = serve(echo, "instance = \"per-connection\"\n[listener.config]\nfault-trigger = \"!boom\"");
        let mut bystander = server.connect("echo");
        assert_eq!(bystander.ask("before"), "before");
        let mut culprit = server.connect("echo");
        culprit.send_line("!boom");
        let (back, _) = culprit.until_end();
        assert!(!back.windows(5).any(|w| w == b"!boom"), "the trigger was echoed");
        server.wait_for_log(&["handler failed", "listener=echo"]);
        assert_eq!(bystander.ask("after"), "after");
        let mut newcomer = server.connect("echo");
        assert_eq!(newcomer.ask("new"), "new");
    }

    /// Starting and swapping (here, to new settings) load the compiled component from
    /// the cache, which `warm` filled: a Python or JavaScript plugin takes seconds to
    /// compile, a cache load milliseconds.
    fn restart_and_swap_load_from_the_cache(echo: &str) {
        let listener =
            |greeting: &str| listener("echo", echo, &format!("[listener.config]\ngreeting = \"{greeting}\""));
        let server = Server::start(&listener("one"));
        assert_eq!(server.connect("echo").line(), "one");
        server.reload(&listener("two"));
        server.wait_for_log(&["version 2 took over", "listener=echo"]);
        assert_eq!(server.connect("echo").line(), "two");
        let log = server.log();
        let loads: Vec<&str> = log.lines().filter(|line| line.contains("plugin ready")).collect();
        assert!(loads.len() >= 2, "a start and a swap, each a load:\n{log}");
        assert!(loads.iter().all(|line| !line.contains("from=compiled")), "compiled again:\n{}", loads.join("\n"));
    }
}

/// The chat behaviours.
mod chat {
    use super::*;

    rows! {
        "chat": [
            join_message_leave, partial_lines, long_line, end_of_stream, timers, close_modes, motd,
            slow_member_misses_lines, burst_of_short_lines, fault_is_contained,
        ]
        for rust = Source::Repo("rust"),
            c = Source::Repo("c"),
            zig = Source::Repo("zig"),
            python = Source::Repo("python"),
            js = Source::Repo("js"),
    }

    fn serve(chat: &str, extra: &str) -> Server {
        Server::start(&listener("chat", chat, extra))
    }

    /// A member: its connection and its name.
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

    /// `n` members joined in turn; each earlier member has read each later one's
    /// `joined` line.
    fn join(server: &Server, n: usize) -> Vec<Member> {
        let mut members: Vec<Member> = Vec::new();
        for _ in 0..n {
            let member = welcome(server.connect("chat"));
            for earlier in &mut members {
                earlier.expect(&format!("* {} joined", member.name));
            }
            members.push(member);
        }
        members
    }

    /// The member whose welcome `client` reads.
    fn welcome(mut client: Client) -> Member {
        let line = client.line();
        let name = line.strip_prefix("* welcome ").unwrap_or_else(|| panic!("not a welcome: {line:?}"));
        let id = name.strip_prefix("user").unwrap_or_else(|| panic!("not named userID: {line:?}"));
        assert!(id.parse::<u64>().is_ok(), "not named userID: {line:?}");
        Member { name: name.to_owned(), client }
    }

    /// Welcome, joined, messages to the others only, left.
    fn join_message_leave(chat: &str) {
        let server = serve(chat, "");
        let mut members = join(&server, 3);
        let [a, b, c] = &mut members[..] else { unreachable!() };
        a.client.send_line("hello room");
        b.expect(&format!("{}: hello room", a.name));
        c.expect(&format!("{}: hello room", a.name));
        b.client.send_line("hi");
        // Had `a` got its own line back, it would come before `b`'s.
        a.expect(&format!("{}: hi", b.name));
        c.expect(&format!("{}: hi", b.name));
        let gone = members.pop().unwrap();
        drop(gone.client);
        for member in &mut members {
            member.expect(&format!("* {} left", gone.name));
        }
    }

    /// A line split over writes waits for its end; lines written together are each
    /// handled, in order; `\r\n` ends a line as `\n` does.
    fn partial_lines(chat: &str) {
        let server = serve(chat, "");
        let mut members = join(&server, 2);
        let [a, b] = &mut members[..] else { unreachable!() };
        a.client.write(b"par");
        assert!(b.client.quiet_for(Duration::from_millis(200)), "half a line was relayed");
        a.client.write(b"tial\n");
        b.expect(&format!("{}: partial", a.name));
        a.client.write(b"one\ntwo\nthr");
        b.expect(&format!("{}: one", a.name));
        b.expect(&format!("{}: two", a.name));
        a.client.write(b"ee\r\n");
        b.expect(&format!("{}: three", a.name));
    }

    /// More than 4096 bytes without a newline: told, closed after the notice.
    fn long_line(chat: &str) {
        let server = serve(chat, "");
        let mut members = join(&server, 2);
        let [a, b] = &mut members[..] else { unreachable!() };
        a.client.write(&[b'x'; 5000]);
        assert_eq!(a.client.line(), "* line too long");
        assert_eq!(a.client.until_eof(), b"");
        b.expect(&format!("* {} left", a.name));
    }

    /// A member that stops sending is closed, and leaves.
    fn end_of_stream(chat: &str) {
        let server = serve(chat, "");
        let mut members = join(&server, 2);
        let [a, b] = &mut members[..] else { unreachable!() };
        a.client.shutdown_write();
        assert_eq!(a.client.until_eof(), b"");
        b.expect(&format!("* {} left", a.name));
    }

    /// Several timers per member, re-armed and cancelled.
    fn timers(chat: &str) {
        let server = serve(chat, "");
        let [mut a] = join(&server, 1).try_into().ok().unwrap();
        assert_eq!(a.client.ask("/timer 1"), "* usage: /timer ID MILLIS");
        assert_eq!(a.client.ask("/timer x 10"), "* usage: /timer ID MILLIS");
        assert_eq!(a.client.ask("/cancel"), "* usage: /cancel ID");
        assert_eq!(a.client.ask("/timer 1 1500"), "* timer 1 armed");
        assert_eq!(a.client.ask("/timer 2 700"), "* timer 2 armed");
        assert_eq!(a.client.ask("/timer 3 300"), "* timer 3 armed");
        // Re-armed sooner: it fires once, at the new time, before timer 2.
        assert_eq!(a.client.ask("/timer 1 100"), "* timer 1 armed");
        assert_eq!(a.client.ask("/cancel 3"), "* timer 3 cancelled");
        assert_eq!(a.client.ask("/cancel 4"), "* timer 4 not armed");
        a.expect("* timer 1 fired");
        a.expect("* timer 2 fired");
        // Past timer 1's first time and timer 3's: neither fires.
        assert!(a.client.quiet_for(Duration::from_millis(1200)), "a re-armed or cancelled timer fired");
        assert_eq!(a.client.ask("/cancel 2"), "* timer 2 not armed");
    }

    /// `/quit` closes after sending `* bye`; `/drop` closes at once; both leave.
    fn close_modes(chat: &str) {
        let server = serve(chat, "");
        let mut members = join(&server, 3);
        let [a, b, c] = &mut members[..] else { unreachable!() };
        assert_eq!(a.client.ask("/quit"), "* bye");
        assert_eq!(a.client.until_eof(), b"");
        b.expect(&format!("* {} left", a.name));
        c.expect(&format!("* {} left", a.name));
        b.client.send_line("/drop");
        let (rest, _) = b.client.until_end();
        assert_eq!(rest, b"", "/drop sent something");
        c.expect(&format!("* {} left", b.name));
    }

    /// The `motd` config value follows the welcome.
    fn motd(chat: &str) {
        let server = serve(chat, "[listener.config]\nmotd = \"be nice\"");
        let mut first = welcome(server.connect("chat"));
        first.expect("* be nice");
        let mut second = welcome(server.connect("chat"));
        second.expect("* be nice");
        first.expect(&format!("* {} joined", second.name));
    }

    /// A member that reads nothing misses lines; the room goes on without it.
    fn slow_member_misses_lines(chat: &str) {
        let server = serve(chat, "[listener.limits]\nsend-buffer = \"4 KiB\"");
        let mut slow = welcome(Client::connect_with_small_window(server.addr("chat")));
        let mut members = join(&server, 2);
        let [a, b] = &mut members[..] else { unreachable!() };
        // A line at a time, so that a reader's 4 KiB buffer always has room for it;
        // 6 MB in all, more than the kernel holds for the one that does not read.
        let filler = "y".repeat(4000);
        for i in 0..1500 {
            a.client.send_line(&format!("{i} {filler}"));
            b.expect(&format!("{}: {i} {filler}", a.name));
        }
        slow.client.shutdown_write();
        let got = String::from_utf8(slow.client.until_eof()).unwrap();
        let relayed = got.lines().filter(|line| line.starts_with(&format!("{}: ", a.name))).count();
        assert!(relayed < 1500, "a member reading nothing got all {relayed} lines through 4 KiB");
    }

    /// 1 MiB of two-byte lines at once: the room is not faulted for the time they take
    /// (a member may miss some of them, if its send buffer fills).
    fn burst_of_short_lines(chat: &str) {
        let server = serve(chat, "");
        let mut members = join(&server, 2);
        let [a, b] = &mut members[..] else { unreachable!() };
        let mut writer = a.client.stream().try_clone().unwrap();
        let writing = thread::spawn(move || {
            std::io::Write::write_all(&mut writer, &b"x\n".repeat(1 << 19)).unwrap();
            std::io::Write::write_all(&mut writer, b"done\n").unwrap();
        });
        let relayed = format!("{}: x", a.name);
        loop {
            let line = b.client.line();
            if line == format!("{}: done", a.name) {
                break;
            }
            assert_eq!(line, relayed, "what {} got", b.name);
        }
        writing.join().unwrap();
        b.client.send_line("still here");
        a.expect(&format!("{}: still here", b.name));
        assert!(!server.log().contains("handler failed"), "the burst faulted the room:\n{}", server.log());
    }

    /// The fault trigger traps: the host ends the instance's connections and logs the
    /// fault, and the next members get a working room.
    fn fault_is_contained(chat: &str) {
        let server = serve(chat, "[listener.config]\nfault-trigger = \"!boom\"");
        let [mut a] = join(&server, 1).try_into().ok().unwrap();
        a.client.send_line("!boom");
        let (rest, _) = a.client.until_end();
        assert_eq!(rest, b"", "the trigger was answered");
        server.wait_for_log(&["handler failed", "listener=chat"]);
        let mut members = join(&server, 2);
        let [c, d] = &mut members[..] else { unreachable!() };
        c.client.send_line("still here");
        d.expect(&format!("{}: still here", c.name));
    }
}
