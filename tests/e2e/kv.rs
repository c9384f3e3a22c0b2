//! The kv plugin: the Redis protocol as `redis-cli` and the `redis` crate speak it,
//! pipelining, Redis's errors, expiry, the `maxmemory` bound, and clients that send
//! what is not RESP.

use std::net::SocketAddr;
use std::process::Command;
use std::time::Instant;

use crate::harness::{Client, PATIENCE, Server, listener, plugins};

/// The OOM refusal, as Redis words it under `noeviction`.
const OOM: &str = "OOM command not allowed when used memory > 'maxmemory'.";

fn kv_server(extra: &str) -> Server {
    Server::start(&listener("kv", plugins::KV, extra))
}

/// What `redis-cli` prints for one command (its raw output: not a terminal).
fn cli(addr: SocketAddr, args: &[&str]) -> String {
    let output = Command::new("redis-cli")
        .args(["-h", &addr.ip().to_string(), "-p", &addr.port().to_string()])
        .args(args)
        .output()
        .expect("redis-cli runs (Debian's redis-tools)");
    assert!(output.status.success(), "redis-cli {args:?}: {}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8(output.stdout).unwrap().trim_end_matches('\n').to_owned()
}

/// Send `request` and read exactly as many bytes as `expected` has.
fn exchange(client: &mut Client, request: &[u8], expected: &[u8]) {
    client.write(request);
    let got = client.bytes(expected.len());
    assert_eq!(String::from_utf8_lossy(&got), String::from_utf8_lossy(expected));
}

/// A command as a RESP array.
fn command(args: &[&[u8]]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", args.len()).into_bytes();
    for arg in args {
        out.extend_from_slice(format!("${}\r\n", arg.len()).as_bytes());
        out.extend_from_slice(arg);
        out.extend_from_slice(b"\r\n");
    }
    out
}

#[test]
fn redis_cli_runs_every_command() {
    let server = kv_server("");
    let addr = server.addr("kv");
    let cases: &[(&[&str], &str)] = &[
        (&["PING"], "PONG"),
        (&["PING", "hello"], "hello"),
        (&["ECHO", "two words"], "two words"),
        (&["GET", "k"], ""),
        (&["SET", "k", "v"], "OK"),
        (&["GET", "k"], "v"),
        (&["SET", "k", "w", "NX"], ""),
        (&["SET", "k", "w", "XX"], "OK"),
        (&["SET", "other", "w", "XX"], ""),
        (&["SET", "t", "1", "EX", "100"], "OK"),
        (&["TTL", "t"], "100"),
        (&["SET", "p", "1", "PX", "100000"], "OK"),
        (&["TTL", "p"], "100"),
        (&["TTL", "k"], "-1"),
        (&["TTL", "missing"], "-2"),
        (&["EXPIRE", "k", "50"], "1"),
        (&["TTL", "k"], "50"),
        (&["EXPIRE", "missing", "50"], "0"),
        (&["INCR", "n"], "1"),
        (&["INCRBY", "n", "41"], "42"),
        (&["DECR", "n"], "41"),
        (&["MSET", "a", "1", "b", "2"], "OK"),
        (&["MGET", "a", "missing", "b"], "1\n\n2"),
        (&["EXISTS", "a", "b", "missing", "a"], "3"),
        (&["DBSIZE"], "6"),
        (&["DEL", "a", "b", "missing"], "2"),
        (&["DBSIZE"], "4"),
        (&["FLUSHALL"], "OK"),
        (&["DBSIZE"], "0"),
        (&["GET", "k"], ""),
    ];
    for (args, expected) in cases {
        assert_eq!(cli(addr, args), *expected, "redis-cli {args:?}");
    }
}

#[test]
fn redis_cli_sees_the_errors_in_redis_words() {
    let server = kv_server("");
    let addr = server.addr("kv");
    let cases: &[(&[&str], &str)] = &[
        (&["FOO", "a", "b"], "ERR unknown command 'FOO', with args beginning with: 'a' 'b' "),
        (&["GET"], "ERR wrong number of arguments for 'get' command"),
        (&["SET", "k"], "ERR wrong number of arguments for 'set' command"),
        (&["MSET", "a", "1", "b"], "ERR wrong number of arguments for 'mset' command"),
        (&["SET", "k", "abc"], "OK"),
        (&["INCR", "k"], "ERR value is not an integer or out of range"),
        (&["INCRBY", "n", "x"], "ERR value is not an integer or out of range"),
        (&["SET", "k", "v", "NX", "XX"], "ERR syntax error"),
        (&["SET", "k", "v", "EX"], "ERR syntax error"),
        (&["SET", "k", "v", "EX", "0"], "ERR invalid expire time in 'set' command"),
        (&["SET", "k", "v", "LATER"], "ERR syntax error"),
        (&["GET", "k"], "abc"),
    ];
    for (args, expected) in cases {
        assert_eq!(cli(addr, args), *expected, "redis-cli {args:?}");
    }
}

#[test]
fn the_redis_crate_runs_every_command() {
    let server = kv_server("");
    let client = redis::Client::open(format!("redis://{}/", server.addr("kv"))).unwrap();
    let mut con = client.get_connection_with_timeout(PATIENCE).unwrap();
    let query = |con: &mut redis::Connection, args: &[&str]| -> redis::Value {
        let mut cmd = redis::cmd(args[0]);
        for arg in &args[1..] {
            cmd.arg(*arg);
        }
        cmd.query(con).unwrap_or_else(|e| panic!("{args:?}: {e}"))
    };
    use redis::Value::{Array, BulkString, Int, Nil, Okay, SimpleString};
    let bulk = |s: &str| BulkString(s.as_bytes().to_vec());
    assert_eq!(query(&mut con, &["PING"]), SimpleString("PONG".into()));
    assert_eq!(query(&mut con, &["ECHO", "hi"]), bulk("hi"));
    assert_eq!(query(&mut con, &["SET", "k", "v"]), Okay);
    assert_eq!(query(&mut con, &["GET", "k"]), bulk("v"));
    assert_eq!(query(&mut con, &["SET", "k", "w", "NX"]), Nil);
    assert_eq!(query(&mut con, &["SET", "k", "w", "XX", "EX", "10"]), Okay);
    assert_eq!(query(&mut con, &["TTL", "k"]), Int(10));
    assert_eq!(query(&mut con, &["SET", "p", "v", "PX", "5000"]), Okay);
    assert_eq!(query(&mut con, &["EXPIRE", "p", "20"]), Int(1));
    assert_eq!(query(&mut con, &["TTL", "p"]), Int(20));
    assert_eq!(query(&mut con, &["INCR", "n"]), Int(1));
    assert_eq!(query(&mut con, &["INCRBY", "n", "9"]), Int(10));
    assert_eq!(query(&mut con, &["DECR", "n"]), Int(9));
    assert_eq!(query(&mut con, &["MSET", "a", "1", "b", "2"]), Okay);
    assert_eq!(query(&mut con, &["MGET", "a", "x", "b"]), Array(vec![bulk("1"), Nil, bulk("2")]));
    assert_eq!(query(&mut con, &["EXISTS", "a", "x"]), Int(1));
    assert_eq!(query(&mut con, &["DEL", "a", "x"]), Int(1));
    assert_eq!(query(&mut con, &["DBSIZE"]), Int(4));
    assert_eq!(query(&mut con, &["FLUSHALL"]), Okay);
    assert_eq!(query(&mut con, &["DBSIZE"]), Int(0));

    // The crate's typed API and its errors.
    let _: () = redis::Commands::set(&mut con, "typed", 7).unwrap();
    let seven: i64 = redis::Commands::get(&mut con, "typed").unwrap();
    assert_eq!(seven, 7);
    let _: () = redis::Commands::set(&mut con, "word", "abc").unwrap();
    let e = redis::Commands::incr::<_, _, i64>(&mut con, "word", 1).unwrap_err();
    assert!(e.to_string().contains("value is not an integer or out of range"), "{e}");
    let e = redis::cmd("NOPE").query::<redis::Value>(&mut con).unwrap_err();
    assert!(e.to_string().contains("unknown command 'NOPE'"), "{e}");

    // A pipeline: one write, every answer in order.
    let mut pipe = redis::pipe();
    for i in 0..100 {
        pipe.cmd("SET").arg(format!("key{i}")).arg(i).cmd("INCR").arg(format!("key{i}"));
    }
    pipe.cmd("DBSIZE");
    let answers: Vec<redis::Value> = pipe.query(&mut con).unwrap();
    assert_eq!(answers.len(), 201);
    for i in 0..100 {
        assert_eq!((&answers[2 * i], &answers[2 * i + 1]), (&Okay, &Int(i as i64 + 1)));
    }
    assert_eq!(answers[200], Int(102));
}

#[test]
fn pipelined_commands_are_answered_in_order_however_they_arrive() {
    let server = kv_server("");
    let mut client = server.connect("kv");
    let mut request = Vec::new();
    let mut expected = Vec::new();
    for i in 0..2000 {
        let key = format!("k{i}");
        request.extend(command(&[b"SET", key.as_bytes(), i.to_string().as_bytes()]));
        request.extend(command(&[b"INCR", key.as_bytes()]));
        // Inline commands, as telnet sends them, mixed in.
        request.extend(format!("GET {key}\r\n").as_bytes());
        let value = (i + 1).to_string();
        expected.extend(format!("+OK\r\n:{value}\r\n${}\r\n{value}\r\n", value.len()).as_bytes());
    }
    request.extend(command(&[b"DBSIZE"]));
    expected.extend(b":2000\r\n");
    // All at once.
    exchange(&mut client, &request, &expected);

    // One byte at a time: a partial command waits in the receive buffer.
    let small =
        [command(&[b"SET", b"big", &[b'x'; 3000]]), command(&[b"STRLEN-IS-UNKNOWN"]), b"PING\n".to_vec()].concat();
    let reply = b"+OK\r\n-ERR unknown command 'STRLEN-IS-UNKNOWN', with args beginning with: \r\n+PONG\r\n";
    for byte in &small {
        client.write(&[*byte]);
    }
    assert_eq!(String::from_utf8_lossy(&client.bytes(reply.len())), String::from_utf8_lossy(reply));
    exchange(&mut client, &command(&[b"GET", b"big"]), format!("$3000\r\n{}\r\n", "x".repeat(3000)).as_bytes());

    // A command of many arguments in 3-byte pieces: each piece is looked at from
    // where the last stopped, and the whole runs once.
    let pairs: Vec<Vec<u8>> =
        (0..300).flat_map(|i| [format!("m{i}").into_bytes(), format!("{i}").into_bytes()]).collect();
    let mset = command(&[&[&b"MSET"[..]], &pairs.iter().map(Vec::as_slice).collect::<Vec<_>>()[..]].concat());
    for piece in mset.chunks(3) {
        client.write(piece);
    }
    exchange(&mut client, b"MGET m0 m299\r\n", b"+OK\r\n*2\r\n$1\r\n0\r\n$3\r\n299\r\n");

    // redis-cli --pipe: its own count of the replies.
    let mut pipe = Command::new("redis-cli")
        .args(["-p", &server.addr("kv").port().to_string(), "--pipe"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let input: Vec<u8> = (0..500).flat_map(|i| command(&[b"SET", format!("pipe{i}").as_bytes(), b"v"])).collect();
    std::io::Write::write_all(&mut pipe.stdin.take().unwrap(), &input).unwrap();
    let output = pipe.wait_with_output().unwrap();
    let report = String::from_utf8_lossy(&output.stdout);
    assert!(report.contains("errors: 0, replies: 500"), "{report}");
}

#[test]
fn many_replies_wait_for_a_slow_reader_and_none_is_lost() {
    let server = kv_server("[listener.limits]\nsend-buffer = \"64 KiB\"");
    let mut client = server.connect("kv");
    let value = "v".repeat(1000);
    exchange(&mut client, &command(&[b"SET", b"k", value.as_bytes()]), b"+OK\r\n");
    // 2000 GETs of 1000 bytes: 2 MB of replies through a 64 KiB send buffer.
    let request: Vec<u8> = (0..2000).flat_map(|_| command(&[b"GET", b"k"])).collect();
    let one = format!("$1000\r\n{value}\r\n");
    client.write(&request);
    for i in 0..2000 {
        assert_eq!(client.bytes(one.len()), one.as_bytes(), "reply {i}");
    }
    exchange(&mut client, b"PING\r\n", b"+PONG\r\n");
}

#[test]
fn a_key_with_a_deadline_is_there_then_gone() {
    let server = kv_server("");
    let addr = server.addr("kv");
    let mut client = server.connect("kv");
    // SET and GET in one write are served in one event, at one instant: present right
    // after SET however busy the machine is.
    exchange(&mut client, b"SET short v PX 200\r\nGET short\r\n", b"+OK\r\n$1\r\nv\r\n");
    exchange(&mut client, b"SET swept v PX 200\r\nSET forever v\r\n", b"+OK\r\n+OK\r\n");
    let start = Instant::now();
    while cli(addr, &["GET", "short"]) == "v" {
        assert!(start.elapsed() < PATIENCE, "`short` still there after {PATIENCE:?}");
    }
    // Nobody asks for `swept`: the sweep removes it, and DBSIZE (which counts keys not
    // yet collected, as Redis's does) comes down to `forever` alone.
    while client_ask(&mut client, b"DBSIZE\r\n") != ":1" {
        assert!(start.elapsed() < PATIENCE, "`swept` never swept");
    }
    assert_eq!(cli(addr, &["EXISTS", "forever", "short", "swept"]), "1");
    assert_eq!(cli(addr, &["TTL", "short"]), "-2");
}

/// One inline command and its one-line reply, without the CRLF.
fn client_ask(client: &mut Client, request: &[u8]) -> String {
    client.write(request);
    client.line().trim_end_matches('\r').to_owned()
}

#[test]
fn writes_past_maxmemory_are_refused_until_keys_go() {
    // maxmemory at half the instance's memory, as the plugin's doc advises.
    let server = kv_server("[listener.limits]\nmemory = \"16 MiB\"\n[listener.config]\nmaxmemory = \"8 MiB\"");
    let addr = server.addr("kv");
    let mut writer = server.connect("kv");
    let value = vec![b'x'; 10_000];
    let mut stored = 0;
    loop {
        let key = format!("k{stored}");
        let request = command(&[b"SET", key.as_bytes(), &value]);
        match client_ask(&mut writer, &request).as_str() {
            "+OK" => stored += 1,
            refusal => {
                assert_eq!(refusal, format!("-{OOM}"));
                break;
            }
        }
        assert!(stored < 1000, "8 MiB took more than 10 MB");
    }
    assert!(stored > 700, "refused after only {stored} values of 10 KB under 8 MiB");
    // Reads go on, from this client and another.
    exchange(&mut writer, &command(&[b"GET", b"k0"]), &[b"$10000\r\n", &value[..], b"\r\n"].concat());
    assert_eq!(cli(addr, &["EXISTS", "k0", "k1"]), "2");
    // Small keys fill what is left, then are refused too, each of them: the instance
    // (16 MiB) never runs out of memory, whatever they cost in the hash table.
    let smalls: Vec<u8> = (0..20_000).flat_map(|i| command(&[b"SET", format!("s{i}").as_bytes(), b"1"])).collect();
    writer.write(&smalls);
    let mut small_ones = 0;
    for i in 0..20_000 {
        match writer.line().trim_end_matches('\r') {
            "+OK" if small_ones == i => small_ones += 1,
            refusal => assert_eq!(refusal, format!("-{OOM}"), "small SET {i}"),
        }
    }
    assert!(small_ones < 20_000, "20 000 small keys fit in what 10 KB values left");
    assert_eq!(client_ask(&mut writer, b"INCR counter\r\n"), format!("-{OOM}"));
    assert_eq!(cli(addr, &["MSET", "a", "1", "b", "2"]), OOM);
    assert_eq!(cli(addr, &["DBSIZE"]), (stored + small_ones).to_string());
    // DEL frees room: writes work again.
    assert_eq!(cli(addr, &["DEL", "k0", "k1"]), "2");
    assert_eq!(cli(addr, &["SET", "again", "yes"]), "OK");
    assert_eq!(cli(addr, &["GET", "again"]), "yes");
    assert_eq!(cli(addr, &["FLUSHALL"]), "OK");
    assert_eq!(cli(addr, &["SET", "k0", std::str::from_utf8(&value).unwrap()]), "OK");
    server.assert_alive("after the refusals");
    assert!(!server.log().contains("fault"), "{}", server.log());
}

#[test]
fn garbage_and_a_huge_bulk_length_are_answered_then_closed() {
    let server = kv_server("");
    let mut bystander = server.connect("kv");
    exchange(&mut bystander, b"SET mine kept\r\n", b"+OK\r\n");
    let cases: &[(&[u8], &str)] = &[
        (b"*1\r\n$99999999999\r\n", "-ERR Protocol error: invalid bulk length"),
        (b"*1\r\n$600000\r\n", "-ERR Protocol error: invalid bulk length"),
        (b"*x\r\n", "-ERR Protocol error: invalid multibulk length"),
        (b"*99999999\r\n", "-ERR Protocol error: invalid multibulk length"),
        (b"*2\r\n$3\r\nGET\r\n:1\r\n", "-ERR Protocol error: expected '$', got ':'"),
        (&[b'*'; 100], "-ERR Protocol error: too big multibulk count string"),
        (&[b'a'; 70_000], "-ERR Protocol error: too big inline request"),
    ];
    for (garbage, expected) in cases {
        let mut client = server.connect("kv");
        // A command before the garbage is answered first.
        client.write(b"PING\r\n");
        client.write(garbage);
        let rest = client.until_eof();
        assert_eq!(String::from_utf8_lossy(&rest), format!("+PONG\r\n{expected}\r\n"));
        exchange(&mut bystander, b"GET mine\r\n", b"$4\r\nkept\r\n");
    }
    // QUIT answers and closes too.
    let mut client = server.connect("kv");
    client.write(b"QUIT\r\nPING\r\n");
    assert_eq!(client.until_eof(), b"+OK\r\n");
    assert_eq!(cli(server.addr("kv"), &["PING"]), "PONG");
}

#[test]
fn the_key_space_survives_a_swap_under_load() {
    const KEYS: usize = 100_000;
    let config = |revision: u32| {
        format!(
            "workers = 1\n{}",
            listener("kv", plugins::KV, &format!("[listener.config]\nrevision = \"{revision}\"\n"))
        )
    };
    let server = Server::start(&config(1));
    let addr = server.addr("kv");
    let client = redis::Client::open(format!("redis://{addr}/")).unwrap();
    let mut con = client.get_connection_with_timeout(PATIENCE).unwrap();
    let key = |i: usize| format!("k:{i}");
    let value = |i: usize| format!("v{i}");
    for batch in (0..KEYS).collect::<Vec<_>>().chunks(1000) {
        let mut mset = redis::cmd("MSET");
        for &i in batch {
            mset.arg(key(i)).arg(value(i));
        }
        let () = mset.query(&mut con).unwrap();
    }
    let () = redis::cmd("SET").arg("with-ttl").arg("x").arg("EX").arg(3600).query(&mut con).unwrap();

    // Clients that write and read all through the swap.
    let bench = Command::new("redis-benchmark")
        .args(["-h", &addr.ip().to_string(), "-p", &addr.port().to_string()])
        .args(["-t", "set", "-n", "2000000", "-c", "20", "-P", "4", "-q"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("redis-benchmark runs (Debian's redis-tools)");
    // One test, so its 20 clients stay connected from start to end.
    while server.log().matches("accepted listener=kv").count() < 21 {
        server.assert_alive("the benchmark's clients");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    server.reload(&config(2));
    let took_over = server.wait_for_log(&["version 2 took over", "listener=kv"]);
    assert!(took_over.contains("migrated=21"), "the benchmark's 20 clients and ours moved: {took_over}");
    let output = bench.wait_with_output().unwrap();
    let said = String::from_utf8_lossy(&output.stdout).into_owned() + &String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{said}");
    assert!(!said.contains("rror"), "no client saw an error: {said}");

    // Every key, on the connection opened before the swap.
    for batch in (0..KEYS).collect::<Vec<_>>().chunks(1000) {
        let mut mget = redis::cmd("MGET");
        for &i in batch {
            mget.arg(key(i));
        }
        let values: Vec<Option<String>> = mget.query(&mut con).unwrap();
        for (&i, got) in batch.iter().zip(values) {
            assert_eq!(got, Some(value(i)), "{}", key(i));
        }
    }
    let ttl: i64 = redis::cmd("TTL").arg("with-ttl").query(&mut con).unwrap();
    assert!((3000..=3600).contains(&ttl), "the deadline moved as time left: {ttl}");
    let size: usize = redis::cmd("DBSIZE").query(&mut con).unwrap();
    assert!((KEYS + 1..=KEYS + 4).contains(&size), "ours and the benchmark's few: {size}");
    let (_, log) = server.terminate();
    assert!(crate::harness::totals(&log, "kv").contains("faults=0"), "{log}");
}
