//! The container image (`deploy/image.sh`, `deploy/Containerfile`): built with podman,
//! unpacked, and its binary run from the unpacked filesystem in a chroot, as the
//! image's user, serving the image's own config moved to free ports of 127.0.0.1.
//!
//! Containers cannot run on the machines this suite runs on, so the chroot stands in
//! for one: the binary finds nothing of the host's (no libc, no shell), only what the
//! image holds, and writes only where the image lets its user write.
//!
//! The image is built under a tag of this test's own and removed afterwards, so the
//! test never replaces an operator's `localhost/sandport:dev`. The musl build in
//! `target/musl` is the long part: minutes from an empty folder, seconds after.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use crate::harness::{Client, Server, free_address, plugins};

/// What the issue asks of the image's size, in bytes (as podman counts them).
const SIZE_LIMIT: u64 = 40_000_000;

/// How long `deploy/image.sh` may take: a cold musl build of the host, on two shared
/// cores, is the most of it.
const BUILD_PATIENCE_SECONDS: u32 = 1800;

/// An image this test built; removed from podman's storage when dropped.
struct Image {
    tag: String,
}

impl Drop for Image {
    fn drop(&mut self) {
        // Best effort: a leftover tag costs disk, not a wrong result.
        let _ = Command::new("podman").args(["rmi", "--force", &self.tag]).output();
    }
}

/// A container created (never started) from an image, to export its filesystem;
/// removed when dropped.
struct Container {
    id: String,
}

impl Drop for Container {
    fn drop(&mut self) {
        let _ = Command::new("podman").args(["rm", "--force", &self.id]).output();
    }
}

fn run(command: &mut Command) -> Output {
    let shown = format!("{command:?}");
    let output = command.output().unwrap_or_else(|e| panic!("cannot run {shown}: {e}"));
    assert!(
        output.status.success(),
        "{shown} failed ({}):\n{}{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

fn stdout_of(command: &mut Command) -> String {
    String::from_utf8(run(command).stdout).unwrap().trim().to_owned()
}

/// Builds the image with the plugins this suite built already (the script would
/// otherwise build the same components again in its own target folder).
fn build_image() -> Image {
    let image = Image { tag: format!("localhost/sandport:e2e-{}", std::process::id()) };
    let script = Path::new(plugins::WORKSPACE).join("deploy/image.sh");
    let components = Path::new(plugins::ECHO).parent().unwrap();
    // At the lowest priority: the other tests of the suite run beside this build, on
    // the same two cores, and must not be starved by it.
    run(Command::new("nice")
        .args(["-n", "19", "timeout"])
        .arg(BUILD_PATIENCE_SECONDS.to_string())
        .arg(&script)
        .arg(&image.tag)
        .env("SANDPORT_PLUGINS", components));
    image
}

/// The image's filesystem, as `podman export` writes a container made from it, unpacked
/// (as root, so owners and modes are kept) into a fresh folder.
fn unpack(image: &Image) -> tempfile::TempDir {
    let rootfs = tempfile::tempdir().unwrap();
    // The image's user must be able to reach `/` of the chroot.
    std::fs::set_permissions(rootfs.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let container = Container { id: stdout_of(Command::new("podman").args(["create", &image.tag])) };
    let archive = tempfile::tempdir().unwrap();
    let tar = archive.path().join("rootfs.tar");
    run(Command::new("podman").arg("export").arg("--output").arg(&tar).arg(&container.id));
    run(Command::new("tar")
        .arg("--extract")
        .arg("--same-owner")
        .arg("--file")
        .arg(&tar)
        .arg("--directory")
        .arg(rootfs.path()));
    rootfs
}

/// Every path under `root` (relative, with a leading `/`) and its metadata, symlinks
/// not followed.
fn tree(root: &Path) -> BTreeMap<String, std::fs::Metadata> {
    let mut found = BTreeMap::new();
    let mut folders = vec![root.to_path_buf()];
    while let Some(folder) = folders.pop() {
        for entry in std::fs::read_dir(&folder).unwrap() {
            let path = entry.unwrap().path();
            let metadata = std::fs::symlink_metadata(&path).unwrap();
            if metadata.is_dir() {
                folders.push(path.clone());
            }
            found.insert(format!("/{}", path.strip_prefix(root).unwrap().display()), metadata);
        }
    }
    found
}

/// The image's config moved to free ports of 127.0.0.1: each `0.0.0.0:PORT` listener
/// gets a free port, and every other mention of that port (the proxy's upstream and
/// `allow-connect`, `127.0.0.1:PORT`) follows it.
fn on_free_ports(config: &str) -> String {
    let ports: Vec<&str> = config
        .match_indices("\"0.0.0.0:")
        .map(|(at, needle)| {
            let rest = &config[at + needle.len()..];
            &rest[..rest.find('"').unwrap()]
        })
        .collect();
    assert!(!ports.is_empty(), "the image's config listens on no 0.0.0.0 address:\n{config}");
    let mut moved = config.to_owned();
    for port in ports {
        let free = free_address().to_string();
        moved = moved.replace(&format!("\"0.0.0.0:{port}\""), &format!("\"{free}\""));
        moved = moved.replace(&format!("\"127.0.0.1:{port}\""), &format!("\"{free}\""));
    }
    assert!(!moved.contains("\"0.0.0.0:"), "an address was left unmoved:\n{moved}");
    moved
}

fn round_trip(addr: SocketAddr, line: &str) {
    let mut client = Client::connect(addr);
    assert_eq!(client.ask(line), line, "the echo through {addr} came back changed");
}

#[test]
fn the_image_is_small_has_no_shell_and_serves_its_plugins_as_its_user() {
    let image = build_image();

    // An array with one object per image named.
    let inspected = stdout_of(Command::new("podman").args(["image", "inspect", &image.tag]));
    let inspected: serde_json::Value = serde_json::from_str(&inspected).unwrap();
    let inspected = &inspected[0];
    let size = inspected["Size"].as_u64().unwrap();
    assert!(size < SIZE_LIMIT, "the image is {size} bytes, not under {SIZE_LIMIT}");
    let config = &inspected["Config"];
    let user = config["User"].as_str().unwrap_or_default();
    let (uid, gid) = user.split_once(':').unwrap_or_else(|| panic!("USER {user:?} is not numeric UID:GID"));
    let (uid, gid): (u32, u32) = (uid.parse().unwrap(), gid.parse().unwrap());
    assert!(uid != 0 && gid != 0, "the image runs as {user}, which is root");
    assert_eq!(config["Entrypoint"], serde_json::json!(["/sandport"]), "{config}");
    let command: Vec<&str> = config["Cmd"].as_array().unwrap().iter().map(|arg| arg.as_str().unwrap()).collect();
    let [.., "--config", config_path] = command[..] else { panic!("CMD {command:?} names no --config") };

    let rootfs = unpack(&image);
    let files = tree(rootfs.path());
    let executables: Vec<&str> = files
        .iter()
        .filter(|(_, metadata)| !metadata.is_dir() && metadata.mode() & 0o111 != 0)
        .map(|(path, _)| path.as_str())
        .collect();
    assert_eq!(executables, ["/sandport"], "the image's executables");
    assert!(!files.contains_key("/bin/sh") && !files.keys().any(|path| path.ends_with("/sh")), "a shell: {files:#?}");
    let owned_by_user: Vec<&str> =
        files.iter().filter(|(_, metadata)| metadata.uid() == uid).map(|(path, _)| path.as_str()).collect();
    assert_eq!(owned_by_user, ["/var/cache/sandport"], "what the image's user may write");

    // The image's environment, as a container would get it (the compiled-component
    // cache's folder comes from it), and its own config on free ports.
    let env: Vec<(String, String)> = config["Env"]
        .as_array()
        .unwrap()
        .iter()
        .map(|pair| pair.as_str().unwrap().split_once('=').unwrap())
        .map(|(key, value)| (key.to_owned(), value.to_owned()))
        .collect();
    assert!(env.iter().any(|(key, value)| key == "XDG_CACHE_HOME" && value == "/var/cache"), "{env:?}");
    let served =
        on_free_ports(&std::fs::read_to_string(rootfs.path().join(config_path.trim_start_matches('/'))).unwrap());
    std::fs::write(rootfs.path().join("tmp/sandport.toml"), &served).unwrap();

    let cache = rootfs.path().join("var/cache/sandport");
    let log = {
        let mut chroot = Command::new("chroot");
        chroot
            .arg(format!("--userspec={uid}:{gid}"))
            .arg(rootfs.path())
            .args(["/sandport", "serve", "--config", "/tmp/sandport.toml"])
            .env_clear()
            .envs(env)
            .env("RUST_LOG", "info");
        let server = Server::start_command(&mut chroot, served.matches("[[listener]]").count());
        round_trip(server.addr("echo"), "through the image");
        round_trip(server.addr("echo-per-connection"), "an instance of its own");
        round_trip(server.addr("tcp-proxy"), "through the proxy to the echo");
        let mut kv = Client::connect(server.addr("kv"));
        kv.write(b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$5\r\nimage\r\n*2\r\n$3\r\nGET\r\n$1\r\nk\r\n");
        assert_eq!(kv.bytes(16), b"+OK\r\n$5\r\nimage\r\n");
        let mut http = Client::connect(server.addr("http-hello"));
        http.write(b"GET / HTTP/1.1\r\nHost: image\r\nConnection: close\r\n\r\n");
        let answer = String::from_utf8(http.until_eof()).unwrap();
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        assert!(answer.ends_with("hello from sandport\n"), "{answer}");
        // Closed before the stop, so that the server has nothing left to wait for.
        drop(http);
        let (_, log) = server.terminate();
        log
    };
    assert!(!log.contains(" WARN "), "a warning from the server in the image:\n{log}");
    let compiled: Vec<PathBuf> = std::fs::read_dir(&cache).unwrap().map(|entry| entry.unwrap().path()).collect();
    assert!(!compiled.is_empty(), "nothing compiled into {}:\n{log}", cache.display());
    for entry in compiled {
        assert_eq!(std::fs::metadata(&entry).unwrap().uid(), uid, "{} is not the image user's", entry.display());
    }
}
