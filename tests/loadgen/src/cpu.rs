//! The CPU time a server spends: which processes a target is, and how much CPU (and
//! resident memory) they use, read from `/proc` (Linux only).
//!
//! On a machine where the client and the server share the cores, request rates
//! squeeze toward each other; the server's CPU time per request separates servers
//! the rates cannot. A target's server is the set of processes that hold its
//! listening socket (a pre-forking server such as nginx is its master and every
//! worker), found through `/proc/net/tcp{,6}` and `/proc/*/fd`, or given by hand.
//!
//! This module only reads `/proc`; it never signals or otherwise touches the
//! processes it measures. It leaves out the load generator's own process, whose CPU
//! time is the client's: a server running inside the client cannot be measured.

use std::fs;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

/// `AT_PAGESZ` in the auxiliary vector: the unit of the sizes in `/proc/*/statm`.
const AT_PAGESZ: usize = 6;
/// `AT_CLKTCK` in the auxiliary vector: the unit of the CPU times in `/proc/*/stat`.
const AT_CLKTCK: usize = 17;
/// The `st` of a listening socket in `/proc/net/tcp`.
const TCP_LISTEN: &str = "0A";

/// The processes whose CPU time counts as a target's server.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ServerProcesses {
    /// Process IDs; empty if none could be found.
    pub pids: Vec<u32>,
    /// Why `pids` is empty, for the report.
    pub missing: Option<String>,
}

impl ServerProcesses {
    /// The given processes.
    pub fn given(pids: Vec<u32>) -> Self {
        ServerProcesses { pids, missing: None }
    }

    /// The processes, other than this one, that hold a socket listening on `addr`
    /// (or on the wildcard address of its family, or of IPv6, with its port).
    pub fn listening_on(addr: SocketAddr) -> Self {
        match find_listeners(addr) {
            Ok(pids) if pids.is_empty() => {
                let missing = format!("no other process holds a socket listening on {addr}");
                ServerProcesses { pids, missing: Some(missing) }
            }
            Ok(pids) => ServerProcesses::given(pids),
            Err(e) => ServerProcesses { pids: Vec::new(), missing: Some(format!("cannot search /proc: {e}")) },
        }
    }

    /// The CPU time (user and system) these processes have used so far, or `None` if
    /// there are none or one of them cannot be read (it has exited).
    pub fn cpu_time(&self) -> Option<Duration> {
        if self.pids.is_empty() {
            return None;
        }
        let ticks = self.pids.iter().map(|&pid| cpu_ticks(pid).ok()).sum::<Option<u64>>()?;
        Some(Duration::from_secs_f64(ticks as f64 / clock_ticks_per_sec() as f64))
    }

    /// The memory these processes hold resident (RSS) now, in bytes, or `None` if
    /// there are none or one of them cannot be read.
    pub fn resident_bytes(&self) -> Option<u64> {
        if self.pids.is_empty() {
            return None;
        }
        self.pids.iter().map(|&pid| resident_bytes(pid).ok()).sum()
    }
}

/// The clock ticks per second of `/proc/*/stat` (`getconf CLK_TCK`); 100, Linux's
/// value everywhere, if it cannot be read.
fn clock_ticks_per_sec() -> u64 {
    auxv(AT_CLKTCK).unwrap_or(100)
}

/// The bytes of a page, the unit of `/proc/*/statm`; 4096 if it cannot be read.
fn page_size() -> u64 {
    auxv(AT_PAGESZ).unwrap_or(4096)
}

/// The value of `key` in the auxiliary vector the kernel gave this process.
fn auxv(key: usize) -> Option<u64> {
    let auxv = fs::read("/proc/self/auxv").ok()?;
    const WORD: usize = size_of::<usize>();
    let words: Vec<usize> =
        auxv.chunks_exact(WORD).map(|w| usize::from_ne_bytes(w.try_into().expect("chunks of a word"))).collect();
    words.chunks_exact(2).find(|pair| pair[0] == key && pair[1] > 0).map(|pair| pair[1] as u64)
}

/// The resident memory of process `pid` in bytes: the second field of
/// `/proc/PID/statm`, in pages.
fn resident_bytes(pid: u32) -> io::Result<u64> {
    let statm = fs::read_to_string(format!("/proc/{pid}/statm"))?;
    let pages = statm.split_ascii_whitespace().nth(1).and_then(|pages| pages.parse::<u64>().ok());
    let pages =
        pages.ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, format!("unexpected /proc/{pid}/statm")))?;
    Ok(pages * page_size())
}

/// `utime + stime` of process `pid`, in clock ticks: every thread's, the exited
/// ones' included.
fn cpu_ticks(pid: u32) -> io::Result<u64> {
    parse_cpu_ticks(&fs::read_to_string(format!("/proc/{pid}/stat"))?)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, format!("unexpected /proc/{pid}/stat")))
}

/// Fields 14 and 15 of a `/proc/PID/stat` line. The second field, the command name
/// in parentheses, may hold spaces and parentheses itself, so the count starts after
/// the last `)`.
fn parse_cpu_ticks(stat: &str) -> Option<u64> {
    let (_, rest) = stat.rsplit_once(')')?;
    // `rest` starts at field 3, the state.
    let mut fields = rest.split_ascii_whitespace().skip(14 - 3);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

/// The processes other than this one that hold a socket listening on `addr`.
fn find_listeners(addr: SocketAddr) -> io::Result<Vec<u32>> {
    let mut inodes = Vec::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        match fs::read_to_string(table) {
            Ok(text) => inodes.extend(text.lines().skip(1).filter_map(|line| listening_inode(line, addr))),
            // A kernel without IPv6 has no tcp6.
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    if inodes.is_empty() {
        return Ok(Vec::new());
    }
    let wanted: Vec<String> = inodes.iter().map(|inode| format!("socket:[{inode}]")).collect();
    let me = std::process::id();
    let mut pids = Vec::new();
    for entry in fs::read_dir("/proc")? {
        let Some(pid) = entry?.file_name().to_str().and_then(|name| name.parse::<u32>().ok()) else { continue };
        if pid == me {
            continue;
        }
        // Processes come and go, and other users' descriptors may be unreadable.
        let Ok(fds) = fs::read_dir(format!("/proc/{pid}/fd")) else { continue };
        let holds = fds.flatten().any(|fd| {
            fs::read_link(fd.path()).is_ok_and(|target| wanted.iter().any(|w| target.as_os_str() == w.as_str()))
        });
        if holds {
            pids.push(pid);
        }
    }
    pids.sort_unstable();
    Ok(pids)
}

/// The inode of the socket a `/proc/net/tcp{,6}` line describes, if it listens on
/// `addr`, on the unspecified address of `addr`'s family, or on IPv6's (which also
/// takes IPv4 connections, unless the socket is IPv6-only), at `addr`'s port.
fn listening_inode(line: &str, addr: SocketAddr) -> Option<u64> {
    let fields: Vec<&str> = line.split_ascii_whitespace().collect();
    let (local, state, inode) = (fields.get(1)?, fields.get(3)?, fields.get(9)?);
    if *state != TCP_LISTEN {
        return None;
    }
    let (ip, port) = local.split_once(':')?;
    if u16::from_str_radix(port, 16).ok()? != addr.port() {
        return None;
    }
    let ip = parse_proc_ip(ip)?;
    let serves = ip == addr.ip()
        || ip == IpAddr::V6(Ipv6Addr::UNSPECIFIED)
        || (ip == IpAddr::V4(Ipv4Addr::UNSPECIFIED) && addr.is_ipv4());
    let inode: u64 = inode.parse().ok()?;
    (serves && inode != 0).then_some(inode)
}

/// An address as `/proc/net/tcp{,6}` writes it: the 32-bit words of the address in
/// hex, each in the machine's byte order.
fn parse_proc_ip(hex: &str) -> Option<IpAddr> {
    let word = |i: usize| -> Option<[u8; 4]> {
        Some(u32::from_str_radix(hex.get(i * 8..(i + 1) * 8)?, 16).ok()?.to_ne_bytes())
    };
    match hex.len() {
        8 => Some(IpAddr::V4(Ipv4Addr::from(word(0)?))),
        32 => {
            let mut octets = [0; 16];
            for i in 0..4 {
                octets[i * 4..][..4].copy_from_slice(&word(i)?);
            }
            let ip = Ipv6Addr::from(octets);
            // A dual-stack socket bound to an IPv4 address shows it mapped.
            Some(ip.to_ipv4_mapped().map_or(IpAddr::V6(ip), IpAddr::V4))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use std::net::TcpListener;

    use super::*;

    #[test]
    fn stat_fields_after_an_awkward_name() {
        let stat = "4242 (a) b (c) S 1 4242 4242 0 -1 4194560 1000 0 0 0 1234 56 0 0 20 0 3 0 100 0 0";
        assert_eq!(parse_cpu_ticks(stat), Some(1234 + 56));
        assert_eq!(parse_cpu_ticks("4242 (truncated) S 1 2"), None);
    }

    #[test]
    fn this_process_has_used_cpu() {
        let me = ServerProcesses::given(vec![std::process::id()]);
        let before = me.cpu_time().unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        // At least one clock tick of work (10 ms at 100 Hz), however busy the machine.
        while me.cpu_time().unwrap() == before {
            assert!(std::time::Instant::now() < deadline, "no CPU time counted");
            std::hint::black_box((0..100_000u64).sum::<u64>());
        }
        assert_eq!(ServerProcesses::default().cpu_time(), None);
        assert!(clock_ticks_per_sec() > 0);
    }

    #[test]
    fn this_process_holds_memory() {
        let me = ServerProcesses::given(vec![std::process::id()]);
        let before = me.resident_bytes().unwrap();
        let touched = std::hint::black_box(vec![1u8; 64 << 20]);
        let after = me.resident_bytes().unwrap();
        assert!(after >= before + (32 << 20), "{before} -> {after}");
        drop(touched);
        assert_eq!(ServerProcesses::default().resident_bytes(), None);
        assert_eq!(page_size() % 4096, 0);
    }

    #[test]
    fn proc_addresses() {
        let v4 = u32::from_ne_bytes([127, 0, 0, 1]);
        assert_eq!(parse_proc_ip(&format!("{v4:08X}")), Some(IpAddr::V4(Ipv4Addr::LOCALHOST)));
        let words = [0u32, 0, u32::from_ne_bytes([0, 0, 0xff, 0xff]), v4];
        let mapped: String = words.iter().map(|w| format!("{w:08X}")).collect();
        assert_eq!(parse_proc_ip(&mapped), Some(IpAddr::V4(Ipv4Addr::LOCALHOST)));
        assert_eq!(parse_proc_ip(&"0".repeat(32)), Some(IpAddr::V6(Ipv6Addr::UNSPECIFIED)));
        assert_eq!(parse_proc_ip("zz"), None);
    }

    #[test]
    fn listening_lines() {
        let addr: SocketAddr = "127.0.0.1:8080".parse().unwrap();
        let local = format!("{:08X}:1F90", u32::from_ne_bytes([127, 0, 0, 1]));
        let line = |local: &str, state: &str| {
            format!("0: {local} 00000000:0000 {state} 00000000:00000000 00:00000000 00000000 0 0 31337 1")
        };
        assert_eq!(listening_inode(&line(&local, "0A"), addr), Some(31337));
        assert_eq!(listening_inode(&line(&local, "01"), addr), None, "established, not listening");
        assert_eq!(listening_inode(&line("00000000:1F90", "0A"), addr), Some(31337), "wildcard");
        assert_eq!(listening_inode(&line("00000000:1F91", "0A"), addr), None, "another port");
        let other = format!("{:08X}:1F90", u32::from_ne_bytes([127, 0, 0, 2]));
        assert_eq!(listening_inode(&line(&other, "0A"), addr), None, "another address");
    }

    #[test]
    fn a_listener_in_this_process_is_not_a_server() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let found = ServerProcesses::listening_on(listener.local_addr().unwrap());
        assert!(found.pids.is_empty() && found.missing.is_some(), "{found:?}");
    }
}
