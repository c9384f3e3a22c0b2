//! Running out of file descriptors: the server lifts its soft limit to the hard one at
//! start and says what that holds; when accept finds no descriptor left, each waiting
//! client is told at once (accepted with a spare descriptor and closed), counted as
//! refused, and the listener serves again as soon as descriptors free up.
//!
//! The limits are set on the server process alone, with util-linux's `prlimit`.

use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Instant;

use crate::harness::{PATIENCE, Server, config_file, listener, plugins, totals, wait_exit};
use crate::neighbour::number;

/// Set the server's limits on open descriptors to `limits` (`SOFT:HARD`).
fn limit_descriptors(pid: u32, limits: &str) {
    let status = Command::new("prlimit")
        .args(["--pid", &pid.to_string(), &format!("--nofile={limits}")])
        .status()
        .expect("prlimit (util-linux) runs");
    assert!(status.success(), "prlimit failed: {status}");
}

/// A process's soft and hard limits on open descriptors.
fn nofile_limits(pid: u32) -> (String, String) {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let line = limits.lines().find(|l| l.starts_with("Max open files")).unwrap();
    let mut words = line.split_whitespace().skip(3);
    (words.next().unwrap().to_owned(), words.next().unwrap().to_owned())
}

/// The descriptors a process has open.
fn open_descriptors(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).unwrap().count()
}

/// A client's round trip: true if its line came back, false if the server closed or
/// reset the connection instead. A client left hanging fails the test at the read
/// timeout.
fn served(stream: &mut TcpStream, n: usize) -> bool {
    let line = format!("client {n}\n");
    stream.set_read_timeout(Some(PATIENCE)).unwrap();
    if let Err(e) = stream.write_all(line.as_bytes()) {
        assert!(matches!(e.kind(), ErrorKind::BrokenPipe | ErrorKind::ConnectionReset), "client {n}: {e}");
        return false;
    }
    let mut got = Vec::new();
    let mut buf = [0u8; 64];
    while got.len() < line.len() {
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(k) => got.extend_from_slice(&buf[..k]),
            Err(e) if e.kind() == ErrorKind::ConnectionReset => break,
            Err(e) => panic!("client {n} was left hanging: {e}"),
        }
    }
    assert!(got.is_empty() || got == line.as_bytes(), "client {n} got {got:?}");
    !got.is_empty()
}

#[test]
fn clients_beyond_the_descriptors_are_told_at_once_and_the_listener_recovers() {
    const CLIENTS: usize = 120;
    const ROOM: usize = 16;
    let server = Server::start(&listener("echo", plugins::ECHO, ""));
    let pid = server.pid();
    let limit = open_descriptors(pid) + ROOM;
    limit_descriptors(pid, &format!("{limit}:{limit}"));

    let mut clients: Vec<TcpStream> = (0..CLIENTS).map(|_| TcpStream::connect(server.addr("echo")).unwrap()).collect();
    let outcomes: Vec<bool> = clients.iter_mut().enumerate().map(|(n, c)| served(c, n)).collect();
    let kept = outcomes.iter().filter(|&&s| s).count();
    let told = CLIENTS - kept;
    // About ROOM are served (the server's own descriptors may come and go a little).
    assert!(kept > 0 && kept <= 2 * ROOM, "{kept} of {CLIENTS} served with room for {ROOM}\n{}", server.log());

    // The served ones leave; once they are closed, newcomers are served again.
    drop(clients);
    server.wait_for_count("closed listener=echo", kept);
    let mut again: Vec<TcpStream> = (0..ROOM / 2).map(|_| TcpStream::connect(server.addr("echo")).unwrap()).collect();
    for (n, client) in again.iter_mut().enumerate() {
        assert!(served(client, CLIENTS + n), "newcomer {n} was refused after descriptors freed up\n{}", server.log());
    }
    drop(again);

    let (status, log) = server.terminate();
    assert!(status.success(), "sandport exited with {status}:\n{log}");
    let line = totals(&log, "echo");
    assert_eq!(number(line, "refused"), told as u64, "{line}");
    assert_eq!(number(line, "accepted"), (kept + ROOM / 2) as u64, "{line}");
    assert!(log.contains("out of file descriptors"), "{log}");
}

#[test]
fn a_listener_starved_of_descriptors_accepts_again_once_they_are_back() {
    let server = Server::start(&listener("echo", plugins::ECHO, ""));
    let pid = server.pid();
    let hard = nofile_limits(pid).1;
    // A soft limit below every descriptor number the server could free: even giving up
    // the spare leaves accept nothing, so the newcomer waits in the backlog.
    limit_descriptors(pid, &format!("5:{hard}"));
    let mut late = TcpStream::connect(server.addr("echo")).unwrap();
    server.wait_for_log(&["accept failed", "listener=echo", "retrying"]);

    // No new readiness will come for it: only the retry can let it in.
    limit_descriptors(pid, &format!("{hard}:{hard}"));
    assert!(served(&mut late, 0), "the waiting client was never served\n{}", server.log());
    drop(late);

    let (status, log) = server.terminate();
    assert!(status.success(), "sandport exited with {status}:\n{log}");
    let line = totals(&log, "echo");
    assert_eq!((number(line, "accepted"), number(line, "refused")), (1, 0), "{line}");
}

#[test]
fn start_lifts_the_soft_limit_and_says_what_it_holds() {
    let (_dir, config) = config_file(&listener("echo", plugins::ECHO, "[listener.limits]\nmax-connections = 2000"));
    let mut child = Command::new("prlimit")
        .arg("--nofile=256:1024")
        .arg("--")
        .arg(env!("CARGO_BIN_EXE_sandport"))
        .args(["serve", "--config"])
        .arg(&config)
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("prlimit (util-linux) runs");
    let (lines, log) = mpsc::channel();
    let stderr = BufReader::new(child.stderr.take().unwrap());
    let reader = std::thread::spawn(move || stderr.lines().map_while(Result::ok).try_for_each(|l| lines.send(l)));

    let deadline = Instant::now() + PATIENCE;
    let mut seen = Vec::new();
    while !seen.iter().any(|l: &String| l.contains(crate::harness::READY)) {
        let wait = deadline.saturating_duration_since(Instant::now());
        seen.push(log.recv_timeout(wait).unwrap_or_else(|e| panic!("no `ready` line ({e}):\n{}", seen.join("\n"))));
    }
    // prlimit execs the server in its own process.
    assert_eq!(nofile_limits(child.id()), ("1024".into(), "1024".into()));

    nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), nix::sys::signal::Signal::SIGTERM).unwrap();
    let status = wait_exit(&mut child);
    reader.join().unwrap().ok();
    seen.extend(log.try_iter());
    let log = seen.join("\n");
    assert!(status.success(), "sandport exited with {status}:\n{log}");
    let holds = seen.iter().find(|l| l.contains("open descriptors: up to 1024")).unwrap_or_else(|| panic!("{log}"));
    let room = number(holds, "connections");
    assert!(room > 900 && room < 1024, "{holds}");
    let warning = seen.iter().find(|l| l.contains(" WARN ") && l.contains("max-connections add up to 2000"));
    assert!(warning.is_some(), "no warning that 2000 connections do not fit:\n{log}");
    assert!(!log.contains("panicked"), "{log}");
}
