//! Swapping a plugin by changing its file: each way files really change (an editor's
//! rename, a `cp` over the file in pieces, a ConfigMap's symlink flip) switches new
//! connections to the new version while open ones carry on; `watch` is off unless
//! asked for.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};

use crate::harness::{Server, listener, plugins};

const REQUEST: &[u8] = b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";

/// Whether a new connection to `name` is served by the HTTP plugin (it answers the
/// request) rather than the echo (it sends the request back).
fn speaks_http(server: &Server, name: &str) -> bool {
    let mut client = server.connect(name);
    client.write(REQUEST);
    match client.bytes(4).as_slice() {
        b"HTTP" => true,
        b"GET " => false,
        other => panic!("listener `{name}` answered neither HTTP nor an echo: {:?}", String::from_utf8_lossy(other)),
    }
}

/// The log line saying that the watcher swapped `name`'s new version in (the
/// control surface says so too, in a line of its own).
fn took_over(name: &str) -> [String; 2] {
    ["plugin file changed: version".to_owned(), format!(" listener={name}")]
}

fn wait_took_over(server: &Server, name: &str) {
    let needles = took_over(name);
    server.wait_for_log(&[&needles[0], &needles[1]]);
}

/// Writes a file as an editor does: a new file, renamed over the old one.
fn replace(path: &Path, content: &[u8]) {
    let temporary = path.with_extension("swp");
    fs::write(&temporary, content).unwrap();
    fs::rename(&temporary, path).unwrap();
}

/// A ConfigMap volume holding `plugin.wasm` with `content`, under `dir/config`;
/// returns the path of the plugin as a pod sees it.
fn config_map(dir: &Path, content: &[u8]) -> PathBuf {
    let config = dir.join("config");
    fs::create_dir_all(config.join("..2026_01_a")).unwrap();
    fs::write(config.join("..2026_01_a/plugin.wasm"), content).unwrap();
    symlink("..2026_01_a", config.join("..data")).unwrap();
    symlink("..data/plugin.wasm", config.join("plugin.wasm")).unwrap();
    config.join("plugin.wasm")
}

/// Updates the ConfigMap volume as the kubelet does: a new timestamped directory,
/// `..data_tmp` pointing to it renamed over `..data`, the old directory removed.
fn flip_config_map(dir: &Path, old: &str, new: &str, content: &[u8]) {
    let config = dir.join("config");
    fs::create_dir(config.join(new)).unwrap();
    fs::write(config.join(new).join("plugin.wasm"), content).unwrap();
    symlink(new, config.join("..data_tmp")).unwrap();
    fs::rename(config.join("..data_tmp"), config.join("..data")).unwrap();
    fs::remove_dir_all(config.join(old)).unwrap();
}

fn plugin_path(path: &Path) -> &str {
    path.to_str().unwrap()
}

#[test]
fn each_way_of_changing_the_file_switches_new_connections_and_open_ones_carry_on() {
    let echo = fs::read(plugins::ECHO).unwrap();
    let http = fs::read(plugins::HTTP_HELLO).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let edited = dir.path().join("edited.wasm");
    let copied = dir.path().join("copied.wasm");
    fs::write(&edited, &echo).unwrap();
    fs::write(&copied, &echo).unwrap();
    let mapped = config_map(dir.path(), &echo);
    let server = Server::start(&format!(
        "watch = true\n{}{}{}",
        listener("edited", plugin_path(&edited), ""),
        listener("copied", plugin_path(&copied), ""),
        listener("mapped", plugin_path(&mapped), ""),
    ));
    let mut open: Vec<_> = ["edited", "copied", "mapped"]
        .into_iter()
        .map(|name| {
            let mut client = server.connect(name);
            assert_eq!(client.ask("before"), "before");
            (name, client)
        })
        .collect();
    for name in ["edited", "copied", "mapped"] {
        assert!(!speaks_http(&server, name), "`{name}` starts with the echo");
    }

    // An editor's write to a new file and rename over the old one.
    replace(&edited, &http);
    wait_took_over(&server, "edited");
    assert!(speaks_http(&server, "edited"), "new connections to `edited` get the new version");

    // A copy over the file that stops half-way for a while: nothing is swapped in
    // while the writer has it open, though the other listener's change settles.
    let mut writer = OpenOptions::new().write(true).truncate(true).open(&copied).unwrap();
    writer.write_all(&http[..http.len() / 2]).unwrap();
    writer.flush().unwrap();
    flip_config_map(dir.path(), "..2026_01_a", "..2026_01_b", &http);
    wait_took_over(&server, "mapped");
    assert!(speaks_http(&server, "mapped"), "new connections to `mapped` get the new version");
    assert!(!speaks_http(&server, "copied"), "a half-written file was swapped in");
    writer.write_all(&http[http.len() / 2..]).unwrap();
    drop(writer);
    wait_took_over(&server, "copied");
    assert!(speaks_http(&server, "copied"), "new connections to `copied` get the new version");

    // The connections opened before go on with the version they started with.
    for (name, client) in &mut open {
        assert_eq!(client.ask("after"), "after", "the open connection to `{name}` stopped echoing");
    }
    // One swap for each change, and no half-written file was offered to one.
    for name in ["edited", "copied", "mapped"] {
        let needles = took_over(name);
        let log = server.log();
        let swaps = log.lines().filter(|line| line.contains(&needles[0]) && line.contains(&needles[1])).count();
        assert_eq!(swaps, 1, "`{name}` was swapped {swaps} times for one change:\n{log}");
    }
    let log = server.log();
    assert!(!log.contains("new version refused"), "a new version was refused:\n{log}");
    server.terminate();
}

#[test]
fn a_file_change_does_nothing_unless_watch_is_on() {
    let echo = fs::read(plugins::ECHO).unwrap();
    let http = fs::read(plugins::HTTP_HELLO).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let unwatched = dir.path().join("unwatched.wasm");
    let watched = dir.path().join("watched.wasm");
    fs::write(&unwatched, &echo).unwrap();
    fs::write(&watched, &echo).unwrap();
    let server = Server::start(&format!(
        "{}{}",
        listener("unwatched", plugin_path(&unwatched), ""),
        listener("watched", plugin_path(&watched), "watch = true"),
    ));
    // The unwatched file changes first: had it been watched, its swap would come
    // no later than the watched one's.
    replace(&unwatched, &http);
    replace(&watched, &http);
    wait_took_over(&server, "watched");
    assert!(speaks_http(&server, "watched"), "the watched listener did not switch");
    assert!(!speaks_http(&server, "unwatched"), "a listener without `watch` switched");
    let log = server.log();
    let followed = log.lines().any(|line| line.contains("plugin file changed") && line.contains(" listener=unwatched"));
    assert!(!followed, "the unwatched listener's file was followed:\n{log}");
    server.terminate();
}

#[test]
fn with_watch_on_a_changed_config_file_is_reloaded_as_by_sighup() {
    let first = listener("first", plugins::ECHO, "");
    let server = Server::start(&format!("watch = true\n{first}"));
    let path = server.config_path();
    let old = fs::read_to_string(&path).unwrap();
    replace(&path, format!("{old}\n{}", listener("second", plugins::ECHO, "")).as_bytes());
    server.wait_for_log(&["config file changed: reloading it"]);
    server.wait_for_log(&["listener added", "listener=second"]);
    let mut client = server.connect("first");
    assert_eq!(client.ask("still here"), "still here", "the listener already there is left alone");
}
