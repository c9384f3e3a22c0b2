//! Live migration: a swap to a new version moves the open connections of a plugin
//! that opts in (the chat) without a disconnect, and drains those of one that does not
//! (the echo).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::time::Duration;

use nix::sys::signal::Signal;
use sandport::config::{Limit, ListenerSpec};
use sandport::handler::{ConnId, Event, Fault, Handler, Host};
use sandport::plugin::{PluginHandler, Runtime};
use sandport::reactor::Reactor;

use crate::harness::{Client, PATIENCE, Server, listener, plugins, totals};

/// Chat members in the room when the version changes.
const MEMBERS: usize = 6;

/// A chat client that joined and picked a name.
struct Member {
    client: Client,
    name: String,
}

/// Join the chat at `addr`, take the name `name` and an idle interval of an hour;
/// every member already in `room` sees the join and the name. The welcome line must
/// start with `welcome`.
fn join(addr: std::net::SocketAddr, room: &mut [Member], name: &str, welcome: &str) -> Member {
    let mut client = Client::connect(addr);
    let line = client.line();
    let first = line.strip_prefix(welcome).unwrap_or_else(|| panic!("not a welcome ({welcome:?}): {line}")).to_owned();
    for other in room.iter_mut() {
        assert_eq!(other.client.line(), format!("* {first} joined"), "{} saw no join", other.name);
    }
    assert_eq!(client.ask(&format!("/name {name}")), format!("* you are {name}"));
    for other in room.iter_mut() {
        assert_eq!(other.client.line(), format!("* {first} is now {name}"), "{} saw no rename", other.name);
    }
    // No idle pings in the middle of the test, however slow the machine; the interval
    // moves with the member too.
    assert_eq!(client.ask("/idle 3600000"), "* idle 3600000");
    Member { client, name: name.to_owned() }
}

/// `from` says `text`; every other member gets it, formatted as `format` says.
fn say(room: &mut [Member], from: usize, text: &str, format: impl Fn(&str, &str) -> String) {
    room[from].client.send_line(text);
    let expected = format(&room[from].name, text);
    for (i, other) in room.iter_mut().enumerate() {
        if i != from {
            assert_eq!(other.client.line(), expected, "what {} got", other.name);
        }
    }
}

fn old_format(name: &str, text: &str) -> String {
    format!("{name}: {text}")
}

fn next_format(name: &str, text: &str) -> String {
    format!("<{name}> {text}")
}

/// Config text for a chat and an echo listener, served by two workers.
fn config(chat_plugin: &str, echo_plugin: &str) -> String {
    format!("workers = 2\n{}{}", listener("chat", chat_plugin, ""), listener("echo", echo_plugin, ""))
}

#[test]
fn sighup_moves_chat_members_to_the_next_version_and_drains_the_echo() {
    let server = Server::start(&config(plugins::CHAT, plugins::ECHO));
    // Another file with the same echo: a new version as far as the server can tell.
    let dir = tempfile::tempdir().unwrap();
    let echo_next = dir.path().join("echo-next.wasm");
    std::fs::copy(plugins::ECHO, &echo_next).unwrap();

    let mut room: Vec<Member> = Vec::new();
    for i in 0..MEMBERS {
        let member = join(server.addr("chat"), &mut room, &format!("member{i}"), "* welcome ");
        room.push(member);
    }
    say(&mut room, 0, "before the swap", old_format);
    let mut old_echo = server.connect("echo");
    old_echo.write(b"old echo, first");
    assert_eq!(old_echo.bytes(15), b"old echo, first");

    let next = config(plugins::FIXTURE_CHAT_NEXT, echo_next.to_str().unwrap());
    std::fs::write(server.config_path(), format!("shutdown-grace-ms = 0\n{next}")).unwrap();
    server.signal(Signal::SIGHUP);
    let chat = server.wait_for_log(&["took over", "listener=chat"]);
    assert!(chat.contains(&format!("migrated={MEMBERS}")) && chat.contains("draining=0"), "{chat}");
    let echo = server.wait_for_log(&["took over", "listener=echo"]);
    assert!(echo.contains("migrated=0") && echo.contains("draining=1"), "the echo drains: {echo}");

    // Every member is still connected, kept its name, and hears the new version at
    // once: its take-over notice, then its message format.
    for member in &mut room {
        assert_eq!(member.client.line(), format!("* chat-next took over, you are still {}", member.name));
    }
    for from in 0..MEMBERS {
        say(&mut room, from, &format!("after the swap, from {from}"), next_format);
    }
    // A newcomer is welcomed by the new version, and the room it joins is whole.
    let newcomer = join(server.addr("chat"), &mut room, "newcomer", "* welcome to chat-next, ");
    room.push(newcomer);
    say(&mut room, MEMBERS, "hello all", next_format);
    // Names are still one to a member: the old members' names moved with them.
    assert_eq!(room[MEMBERS].client.ask("/name member3"), "* name refused");

    // The echo drained: its old connection still works, on the old version, and a new
    // one is served too.
    old_echo.write(b"old echo, second");
    assert_eq!(old_echo.bytes(16), b"old echo, second");
    let mut new_echo = server.connect("echo");
    new_echo.write(b"new echo");
    assert_eq!(new_echo.bytes(8), b"new echo");
    for member in &mut room {
        assert!(member.client.quiet_for(Duration::from_millis(50)), "{} got more than expected", member.name);
    }
    drop((old_echo, new_echo));
    let (_, log) = server.terminate();
    let chat = totals(&log, "chat");
    assert!(chat.contains(&format!("migrated={MEMBERS}")) && chat.contains("faults=0"), "{chat}");
    let echo = totals(&log, "echo");
    assert!(echo.contains("migrated=0") && echo.contains("drained=0") && echo.contains("faults=0"), "{echo}");
}

/// Test-only composition of two real plugin instances in one [`Handler`]: the old
/// version serves until `swap` is set; at the next event it hands every open
/// connection over to the new one, which serves from then on. It is the plugin side
/// of migration, seen through the real reactor's [`Host`] and the real components,
/// with none of the server's swap machinery.
struct Versions {
    old: PluginHandler,
    new: PluginHandler,
    swap: Arc<AtomicBool>,
    swapped: bool,
    open: BTreeSet<ConnId>,
    moved: mpsc::Sender<Result<usize, Fault>>,
}

impl Handler for Versions {
    fn handle(&mut self, host: &mut dyn Host, conn: ConnId, event: Event) -> Result<(), Fault> {
        if !self.swapped && self.swap.load(Ordering::SeqCst) {
            self.swapped = true;
            let moved = self.move_all(host);
            self.moved.send(moved.clone()).unwrap();
            moved?;
        }
        match event {
            Event::Accept(_) => drop(self.open.insert(conn)),
            Event::Close => drop(self.open.remove(&conn)),
            _ => {}
        }
        let serving = if self.swapped { &mut self.new } else { &mut self.old };
        serving.handle(host, conn, event)
    }
}

impl Versions {
    fn move_all(&mut self, host: &mut dyn Host) -> Result<usize, Fault> {
        assert!(self.old.migrates() && self.new.migrates());
        for &conn in &self.open {
            let state = self.old.hand_over(host, conn)?;
            self.new.take_over(host, conn, state)?;
        }
        Ok(self.open.len())
    }
}

/// A reactor serving one listener with [`Versions`] of two plugins.
struct Running {
    addr: std::net::SocketAddr,
    /// Set it to have the next event move every connection.
    swap: Arc<AtomicBool>,
    /// How the move went: the connections moved, or the fault.
    moves: mpsc::Receiver<Result<usize, Fault>>,
    stop: sandport::reactor::StopHandle,
    thread: std::thread::JoinHandle<sandport::reactor::Stats>,
}

/// A `[listener.config]` table.
type Settings<'a> = &'a [(&'a str, &'a str)];

/// Serve `old` then `new`, each a plugin file and its `[listener.config]`.
fn serve_versions(old: (&str, Settings), new: (&str, Settings)) -> Running {
    let runtime = Runtime::new().unwrap();
    let mut spec = ListenerSpec::new("versions", "127.0.0.1:0".parse().unwrap());
    // Polls are what delivers the swap when no client is talking.
    spec.poll_interval = Some(Duration::from_millis(10));
    let instance = |(path, settings): (&str, Settings)| {
        let settings: BTreeMap<String, String> =
            settings.iter().map(|&(key, value)| (key.to_owned(), value.to_owned())).collect();
        let plugin = runtime.load(path.as_ref()).unwrap();
        assert!(plugin.migrates(), "{path} does not migrate");
        plugin.factory(&spec, &settings).instantiate().unwrap()
    };
    let swap = Arc::new(AtomicBool::new(false));
    let (moved, moves) = mpsc::channel();
    let mut versions = Some(Versions {
        old: instance(old),
        new: instance(new),
        swap: swap.clone(),
        swapped: false,
        open: BTreeSet::new(),
        moved,
    });
    let factory = move || {
        let versions = versions.take().ok_or_else(|| Fault { reason: "one instance only".into(), limit: None })?;
        Ok(Box::new(versions) as Box<dyn Handler>)
    };
    let mut reactor = Reactor::new().unwrap();
    let addr = reactor.listen(&spec, Box::new(factory)).unwrap();
    let stop = reactor.stop_handle();
    let thread = std::thread::spawn(move || reactor.run().unwrap());
    Running { addr, swap, moves, stop, thread }
}

impl Running {
    /// Move every connection now; how it went.
    fn swap(&self) -> Result<usize, Fault> {
        self.swap.store(true, Ordering::SeqCst);
        self.moves.recv_timeout(PATIENCE).unwrap()
    }

    /// Stop the reactor; its statistics.
    fn stop(self) -> sandport::reactor::Stats {
        self.stop.stop();
        self.thread.join().unwrap()
    }
}

#[test]
fn plugin_instances_hand_over_and_take_over_through_the_reactor() {
    let echo = Runtime::new().unwrap().load(plugins::ECHO.as_ref()).unwrap();
    assert!(!echo.migrates());
    let running = serve_versions((plugins::CHAT, &[]), (plugins::FIXTURE_CHAT_NEXT, &[]));

    let mut room: Vec<Member> = Vec::new();
    for i in 0..3 {
        let member = join(running.addr, &mut room, &format!("m{i}"), "* welcome ");
        room.push(member);
    }
    say(&mut room, 1, "old times", old_format);
    assert_eq!(running.swap(), Ok(3));
    for member in &mut room {
        assert_eq!(member.client.line(), format!("* chat-next took over, you are still {}", member.name));
    }
    say(&mut room, 2, "new times", next_format);
    // A member that leaves after the move is announced by its name, by the new version.
    let gone = room.remove(0);
    drop(gone.client);
    for member in &mut room {
        assert_eq!(member.client.line(), format!("* {} left", gone.name));
    }
    assert_eq!(running.stop().total.faults, 0);
}

#[test]
fn host_calls_work_in_hand_over_and_take_over() {
    let running = serve_versions((plugins::FIXTURE_MIGRATE_FAULTS, &[]), (plugins::FIXTURE_MIGRATE_FAULTS, &[]));
    let mut client = Client::connect(running.addr);
    client.write(b"before\n");
    assert_eq!(client.line(), "before");
    assert_eq!(running.swap(), Ok(1));
    assert_eq!(client.line(), "* handing over", "sent by the old version's hand-over");
    assert_eq!(client.line(), "* taking over state", "sent by the new version's take-over, with the state");
    client.write(b"after\n");
    assert_eq!(client.line(), "after");
    assert_eq!(running.stop().total.faults, 0);
}

#[test]
fn a_bad_hand_over_or_take_over_is_a_fault_with_its_reason() {
    // (old version's config, new version's config, part of the reason, stopped by the
    // event deadline rather than a trap)
    let cases: [(Settings, Settings, &str, bool); 5] = [
        (&[("hand-over", "trap")], &[], "trapped in hand-over", false),
        (&[("hand-over", "spin")], &[], "trapped in hand-over", true),
        (&[("hand-over", "huge")], &[], "handed over 2097152 bytes of state for connection", false),
        (&[], &[("take-over", "trap")], "trapped in take-over", false),
        (&[], &[("take-over", "spin")], "trapped in take-over", true),
    ];
    for (old, new, reason, timed_out) in cases {
        let case = format!("old {old:?}, new {new:?}");
        let running = serve_versions((plugins::FIXTURE_MIGRATE_FAULTS, old), (plugins::FIXTURE_MIGRATE_FAULTS, new));
        let mut client = Client::connect(running.addr);
        client.write(b"hello\n");
        assert_eq!(client.line(), "hello", "{case}");
        let fault = running.swap().expect_err(&case);
        assert!(fault.reason.contains(reason), "{case}: {fault:?}");
        assert!(
            fault.reason.contains(plugins::FIXTURE_MIGRATE_FAULTS),
            "{case}: the reason names the plugin: {fault:?}"
        );
        let deadline = matches!(fault.limit, Some(Limit::EventTime | Limit::EventWallTime));
        assert_eq!((deadline, fault.limit.is_some()), (timed_out, timed_out), "{case}: {fault:?}");
        // The reactor closes the connections of the instance that faulted.
        client.until_end();
        assert_eq!(running.stop().total.faults, 1, "{case}");
    }
}
