//! Live migration: a swap to a new version moves the open connections of a plugin
//! that opts in (the chat) without a disconnect, and drains those of one that does not
//! (the echo).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use crate::harness::{Client, Server, listener, plugins, run_sandport, totals};

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

    server.reload(&config(plugins::FIXTURE_CHAT_NEXT, echo_next.to_str().unwrap()));
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

/// The `migrate-faults` fixture as listener `mig`, with these `[listener.config]` lines.
fn faults_listener(settings: &str) -> String {
    listener("mig", plugins::FIXTURE_MIGRATE_FAULTS, &format!("[listener.config]\n{settings}"))
}

#[test]
fn host_calls_work_in_hand_over_and_take_over() {
    let server = Server::start(&faults_listener(""));
    let mut client = server.connect("mig");
    client.write(b"before\n");
    assert_eq!(client.line(), "before");
    // A changed setting is a new version too.
    server.reload(&faults_listener("revision = \"2\""));
    assert_eq!(client.line(), "* handing over", "sent by the old version's hand-over");
    assert_eq!(client.line(), "* taking over state", "sent by the new version's take-over, with the state");
    client.write(b"after\n");
    assert_eq!(client.line(), "after");
    let took_over = server.wait_for_log(&["took over", "listener=mig"]);
    assert!(took_over.contains("migrated=1"), "{took_over}");
}

#[test]
fn a_bad_migration_call_calls_the_swap_off_with_its_reason() {
    // (old version's settings, new version's, what the log says, whether the old
    // instance lives on: only a fault of its own ends it)
    // The bound is the new version's listener's (a reload may raise it with the swap).
    let small_state = "[listener.limits]\nmigrate-state = \"1 MiB\"";
    let huge_and_small = "hand-over-instance = \"huge\"\n[listener.limits]\nmigrate-state = \"1 MiB\"";
    let cases = [
        ("hand-over = \"trap\"", "", vec!["trapped in hand-over", "wasm trap"], false),
        ("hand-over = \"spin\"", "", vec!["trapped in hand-over", "limits.event-"], false),
        ("hand-over-instance = \"trap\"", "", vec!["trapped in hand-over-instance", "wasm trap"], false),
        (
            "hand-over = \"huge\"",
            "",
            vec!["handed over 2097152 bytes of state for connection", "the most is 1048576"],
            true,
        ),
        (
            huge_and_small,
            small_state,
            vec!["handed over 2097152 bytes of instance state", "migrate-state is 1048576"],
            true,
        ),
        ("", "take-over = \"trap\"", vec!["trapped in take-over", "wasm trap"], true),
        ("", "take-over = \"spin\"", vec!["trapped in take-over", "limits.event-"], true),
        ("", "take-over-instance = \"trap\"", vec!["trapped in take-over-instance", "wasm trap"], true),
    ];
    for (old, new, reason, lives) in cases {
        let case = format!("old {old:?}, new {new:?}");
        let server = Server::start(&faults_listener(old));
        let mut client = server.connect("mig");
        client.write(b"hello\n");
        assert_eq!(client.line(), "hello", "{case}");
        server.reload(&faults_listener(new));
        let mut needles = vec!["migration", "called off", "listener=mig", plugins::FIXTURE_MIGRATE_FAULTS];
        needles.extend(&reason);
        server.wait_for_log(&needles);
        server.wait_for_log(&["new version refused, the old one goes on serving", "listener=mig"]);
        if lives {
            // Undisturbed: not even the old version's `* handing over` reached it.
            client.write(b"still the old one\n");
            assert_eq!(client.line(), "still the old one", "{case}");
        } else {
            client.until_end();
        }
        let mut fresh = server.connect("mig");
        fresh.write(b"still here\n");
        assert_eq!(fresh.line(), "still here", "{case}");
        let (_, log) = server.terminate();
        let faults = if lives { "faults=0" } else { "faults=1" };
        let mig = totals(&log, "mig");
        assert!(mig.contains(faults) && mig.contains("migrated=0"), "{case}: {log}");
        let over_bound = reason.iter().any(|needle| needle.contains("bytes of"));
        assert_eq!(mig.contains("migrate-state:1"), over_bound, "{case}: a state over its bound is a limit hit: {mig}");
    }
}

/// Clients of the `mig` listener that echo lines as fast as they can until told to
/// stop, each checking every answer; each returns how many round trips it made.
fn echo_load(server: &Server, clients: usize, stop: &Arc<AtomicBool>) -> Vec<std::thread::JoinHandle<(Client, usize)>> {
    (0..clients)
        .map(|c| {
            let mut client = server.connect("mig");
            let stop = Arc::clone(stop);
            std::thread::spawn(move || {
                let mut trips = 0;
                while !stop.load(Ordering::Relaxed) {
                    let line = format!("client {c} line {trips}");
                    client.write(format!("{line}\n").as_bytes());
                    assert_eq!(client.line(), line, "client {c}: an answer other than the echo");
                    trips += 1;
                }
                (client, trips)
            })
        })
        .collect()
}

#[test]
fn a_fault_on_the_fifth_of_eight_connections_leaves_all_eight_on_the_old_version() {
    const CLIENTS: usize = 8;
    let server = Server::start(&format!("workers = 1\n{}", faults_listener("")));
    let stop = Arc::new(AtomicBool::new(false));
    let load = echo_load(&server, CLIENTS, &stop);
    std::thread::sleep(Duration::from_millis(300));
    // The new version takes over four connections, then traps on the fifth: the whole
    // migration is called off and the four it had go back as they were.
    server.reload(&format!("workers = 1\n{}", faults_listener("take-over = \"trap at 5\"")));
    server.wait_for_log(&["take-over told to trap at call 5", "conn=#5"]);
    server.wait_for_log(&["migration to version 2 was called off", "trapped in take-over"]);
    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::Relaxed);
    let mut clients: Vec<Client> = load
        .into_iter()
        .map(|thread| {
            let (client, trips) = thread.join().expect("every echo under load was the client's own line");
            assert!(trips > 0);
            client
        })
        .collect();
    for client in &mut clients {
        assert!(client.quiet_for(Duration::from_millis(50)), "a client got a line nobody asked for");
    }
    // Nothing was lost: the same eight move when the next version does not trap (a
    // setting of its own makes it a new version: the refused one left none behind).
    server.reload(&format!("workers = 1\n{}", faults_listener("revision = \"3\"")));
    for client in &mut clients {
        assert_eq!(client.line(), "* handing over");
        assert_eq!(client.line(), "* taking over state");
        client.write(b"after\n");
        assert_eq!(client.line(), "after");
    }
    let (_, log) = server.terminate();
    let mig = totals(&log, "mig");
    assert!(mig.contains(&format!("migrated={CLIENTS}")) && mig.contains("faults=0"), "{mig}");
}

#[test]
fn check_says_whether_a_plugin_migrates() {
    for (plugin, says) in [
        (plugins::CHAT, "live migration: migrates open connections"),
        (plugins::FIXTURE_CHAT_NEXT, "live migration: migrates open connections"),
        (plugins::ECHO, "live migration: drains on a swap"),
    ] {
        let (status, stdout, stderr) = run_sandport(&["check", plugin]);
        assert!(status.success(), "{plugin}: {stderr}");
        assert!(stdout.lines().any(|line| line == says), "{plugin}: {stdout}");
    }
}
