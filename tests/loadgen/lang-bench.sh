#!/usr/bin/env bash
# The echo plugin in every language, measured the same way (BENCHMARKS.md, "Plugins in
# other languages"): Rust (`cargo plugins`), C, Zig, Python and JavaScript (`make` in
# plugins/LANG/echo). For each language:
#
#   1. build: `make` from clean, wall time, in a copy of plugins/ and wit/ under $OUT
#      (the folders in the repo are left alone); Rust: `cargo plugins` into an empty
#      target dir under $OUT (it builds the four Rust plugins and their dependencies);
#      the component's size in bytes;
#   2. compile: `sandport check` with an empty cache (XDG_CACHE_HOME a fresh dir): the
#      host compiles the component (cold); the same command again, same cache: loaded
#      from the compiled-component cache (warm). The `took=` of its `plugin ready` line
#      and the command's wall time, medians of $REPEAT;
#   3. start to serving: `sandport serve` (one shared echo listener) from spawn until
#      its listener accepts a connection, cold cache and warm cache, medians of $REPEAT;
#   4. per connection: `instance = "per-connection"`, `greeting = "hi"`: from connect
#      to the greeting line, $CONNECTS connections one after another (median, p90);
#      then $HOLD connections held open at once (each has read its greeting): the
#      server's VmRSS (/proc/PID/status) and Pss (/proc/PID/smaps_rollup, which counts
#      the memory image the instances share once) before and after, per connection;
#   5. one RECV round trip: the loadgen, 1 connection, 64 B ping-pong, every language
#      a target of one run (Rust first), alternating rounds;
#   6. throughput: the loadgen, $CONNECTIONS connections, 64 B, one run, Rust first:
#      requests/s against Rust's and server CPU per request;
#   7. idle per-connection instances at scale: a fresh sandport per language with one
#      per-connection echo listener, `sandport-loadgen echo --hold` with $HOLD_MANY
#      connections (one echo each, then idle): the server's VmRSS per connection (the
#      loadgen's figure) and its Pss (/proc/PID/smaps_rollup, the highest seen during
#      the hold), per connection; then its VmRSS and Pss once they are closed (what the
#      pool's slots keep: VmRSS counts the component's memory image once per slot that
#      still maps it, Pss once);
#   8. fresh connections (Rust only): one sandport with the Rust echo on a shared and on
#      a per-connection listener, `sandport-loadgen echo --reconnect`, $CONNECTIONS
#      connections, both targets in one run (shared first): requests/s and server CPU
#      per connection (one request per connection).
#
# Steps 5 and 6 run one sandport per language, each with one shared echo listener with
# `memory = "1 GiB"` (every language alike), because the Python echo leaks: built with
# componentize-py 0.19 to 0.25, every byte it sends (a fault after ~50 MB of output
# under the default 64 MiB); with 0.18.0, pinned in plugins/toolchains.sh, something
# per event (a fault after ~90 000 round trips, whatever their size).
# Every sandport runs with XDG_CACHE_HOME under $OUT. The machine is shared and noisy:
# compare ratios from one run, not absolute figures across runs.
#
# Settings (environment): STEPS (which of the steps after the build to run, default
# "compile start greet loadgen scale reconnect": 2, 3, 4, 5 and 6, 7, 8), HOLD_MANY (5000, step 7),
# LANGS ("rust c zig python js"), ROUNDS (5), DURATION (5,
# seconds per loadgen round), CONNECTIONS (16), REPEAT (3, steps 2 and 3), CONNECTS
# (200), HOLD (100), BUILD (1; 0: no builds, take each plugins/LANG/echo/target/echo.wasm
# as it is), PORT_BASE (18800), OUT (/tmp/sandport-lang-bench), SANDPORT (the host
# binary; default: a copy of target/release/sandport, taken at the start), LOADGEN
# (default: a copy of target/release/sandport-loadgen). Builds nothing of the host:
# build it first (BENCHMARKS.md gives the command). Results: $OUT/summary.md, raw output in $OUT.
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD

LANGS=${LANGS:-rust c zig python js}
ROUNDS=${ROUNDS:-5}
DURATION=${DURATION:-5}
CONNECTIONS=${CONNECTIONS:-16}
REPEAT=${REPEAT:-3}
CONNECTS=${CONNECTS:-200}
HOLD=${HOLD:-100}
BUILD=${BUILD:-1}
PORT_BASE=${PORT_BASE:-18800}
OUT=${OUT:-/tmp/sandport-lang-bench}
STEPS=${STEPS:-compile start greet loadgen scale reconnect}
HOLD_MANY=${HOLD_MANY:-5000}

# Whether step $1 is to run.
wanted() {
    [[ " $STEPS " == *" $1 "* ]]
}

declare -A LABEL=([rust]=Rust [c]=C [zig]=Zig [python]=Python [js]=JavaScript)
read -ra LANG_LIST <<<"$LANGS"

rm -rf "$OUT" && mkdir -p "$OUT/bin" "$OUT/wasm" "$OUT/xdg" "$OUT/logs"
# Copies: the lead rebuilds target/release often.
cp "${SANDPORT:-$ROOT/target/release/sandport}" "$OUT/bin/sandport"
cp "${LOADGEN:-$ROOT/target/release/sandport-loadgen}" "$OUT/bin/sandport-loadgen"
SANDPORT=$OUT/bin/sandport
LOADGEN=$OUT/bin/sandport-loadgen
RESULTS=$OUT/results.tsv # language, key, value
: >"$RESULTS"
result() { printf '%s\t%s\t%s\n' "$1" "$2" "$3" >>"$RESULTS"; }

# shellcheck source=processes.sh
source "$ROOT/tests/loadgen/processes.sh"

# --- the client side: start-up timing, greetings, held connections -------------------
cat >"$OUT/bin/client.py" <<'PY'
import json, os, signal, socket, statistics, subprocess, sys, time

def connect(port, timeout=10.0):
    s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return s

def read_line(s):
    data = b""
    while not data.endswith(b"\n"):
        chunk = s.recv(64)
        if not chunk:
            raise RuntimeError(f"end of stream after {data!r}")
        data += chunk
    return data

def rss_kb(pid, field="VmRSS", file="status"):
    with open(f"/proc/{pid}/{file}") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"no {field} for {pid}")

def startup(port, log, argv):
    """Seconds from spawning argv until 127.0.0.1:port accepts; stops it then."""
    with open(log, "w") as err:
        started = time.perf_counter()
        proc = subprocess.Popen(argv, stderr=err, stdout=subprocess.DEVNULL)
        try:
            while True:
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=1).close()
                    break
                except OSError:
                    if proc.poll() is not None:
                        raise RuntimeError(f"sandport exited with {proc.returncode}; see {log}")
                    if time.perf_counter() - started > 300:
                        raise RuntimeError("nothing listens after 300 s")
                    time.sleep(0.001)
            took = time.perf_counter() - started
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    print(json.dumps({"seconds": took}))

def greet(port, count):
    """Connect, read the greeting line, close; count times, one after another."""
    times = []
    for _ in range(count):
        started = time.perf_counter()
        s = connect(port)
        line = read_line(s)
        times.append(time.perf_counter() - started)
        if line != b"hi\n":
            raise RuntimeError(f"greeting {line!r}")
        s.close()
    times.sort()
    us = lambda t: round(t * 1e6, 1)
    print(json.dumps({"count": count, "p50_us": us(statistics.median(times)),
                      "p90_us": us(times[int(0.9 * (count - 1))]), "min_us": us(times[0]),
                      "mean_us": us(statistics.fmean(times))}))

def hold(port, count, pid):
    """VmRSS of pid before and after count connections are open and greeted; also its
    RssAnon, and its Pss, which counts a page mapped in several places once (VmRSS
    counts a component's memory image, shared by its instances, once per instance)."""
    pss = lambda: rss_kb(pid, "Pss", "smaps_rollup")
    time.sleep(0.5)
    before, anon_before, pss_before = rss_kb(pid), rss_kb(pid, "RssAnon"), pss()
    socks = []
    for _ in range(count):
        s = connect(port)
        if read_line(s) != b"hi\n":
            raise RuntimeError("bad greeting")
        socks.append(s)
    time.sleep(1)
    after, anon_after, pss_after = rss_kb(pid), rss_kb(pid, "RssAnon"), pss()
    # Every connection is still served: one echo each.
    for s in socks:
        s.sendall(b"ping\n")
    for s in socks:
        if read_line(s) != b"ping\n":
            raise RuntimeError("no echo on a held connection")
    for s in socks:
        s.close()
    time.sleep(1)
    closed = rss_kb(pid)
    print(json.dumps({"count": count, "rss_before_kb": before, "rss_after_kb": after,
                      "rss_closed_kb": closed,
                      "per_connection_kb": round((after - before) / count, 1),
                      "anon_per_connection_kb": round((anon_after - anon_before) / count, 1),
                      "pss_per_connection_kb": round((pss_after - pss_before) / count, 1)}))

def field(path, *keys):
    """A value out of a JSON file: field FILE key [key...]."""
    with open(path) as f:
        value = json.load(f)
    for key in keys:
        value = value[int(key)] if isinstance(value, list) else value[key]
    print(value)

command, args = sys.argv[1], sys.argv[2:]
if command == "startup":
    startup(int(args[0]), args[1], args[2:])
elif command == "greet":
    greet(int(args[0]), int(args[1]))
elif command == "hold":
    hold(int(args[0]), int(args[1]), int(args[2]))
elif command == "field":
    field(args[0], *args[1:])
PY
client() { python3 "$OUT/bin/client.py" "$@"; }

median() { # numbers as arguments
    printf '%s\n' "$@" | sort -g | awk '{ v[NR] = $1 } END { print NR % 2 ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}

# The `took=` of a `plugin ready` line, in ms, and its `from=`.
took_ms() {
    grep -m1 'plugin ready' "$1" | sed -E 's/.*took=([0-9.]+)(ns|µs|us|ms|s)$/\1 \2/' |
        awk '{ f = $2 == "s" ? 1000 : $2 == "ms" ? 1 : $2 == "ns" ? 1e-6 : 1e-3; printf "%.2f\n", $1 * f }'
}
loaded_from() { grep -m1 'plugin ready' "$1" | sed -E 's/.* from=([a-z]+) .*/\1/'; }

echo "== $(date -u '+%Y-%m-%d %H:%M UTC'), $(nproc) CPUs, load $(cut -d' ' -f1-3 /proc/loadavg)"
echo "== sandport $(git rev-parse --short HEAD)$(git diff --quiet HEAD -- plugins wit || echo ' (plugins/ or wit/ modified)'), $("$SANDPORT" --version), out $OUT"
git status --short -- plugins wit | sed 's/^/== uncommitted: /'
echo "== $(clang --version | head -1); zig $(python3 -m ziglang version); $(componentize-py --version);" \
    "componentize-js $(componentize-js --version); $(wasm-tools --version)"
echo "== STEPS=\"$STEPS\" HOLD_MANY=$HOLD_MANY LANGS=\"$LANGS\" ROUNDS=$ROUNDS DURATION=$DURATION CONNECTIONS=$CONNECTIONS REPEAT=$REPEAT CONNECTS=$CONNECTS HOLD=$HOLD BUILD=$BUILD"

# --- 1. build --------------------------------------------------------------------------
now() { date +%s.%N; }
if [[ $BUILD == 1 ]]; then
    mkdir -p "$OUT/src"
    tar -C "$ROOT" --exclude=target -cf - wit plugins/c plugins/zig plugins/python plugins/js | tar -C "$OUT/src" -xf -
fi
LANGS_OK=()
echo
echo "== build (wall, from clean)"
for lang in "${LANG_LIST[@]}"; do
    wasm=$OUT/wasm/$lang.wasm
    if [[ $lang == rust ]]; then
        if [[ ! -f $ROOT/target/wasm32-wasip2/plugin/echo.wasm ]]; then
            cargo plugins
        fi
        if [[ $BUILD == 1 ]]; then
            start=$(now)
            if CARGO_TARGET_DIR=$OUT/rust-target cargo plugins >"$OUT/logs/build-rust.log" 2>&1; then
                result rust build_s "$(awk -v a="$start" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }')"
            else
                echo "rust: cargo plugins failed, see $OUT/logs/build-rust.log"
            fi
        fi
        # What is served is the repo's own build, as the brief of these figures says.
        cp "$ROOT/target/wasm32-wasip2/plugin/echo.wasm" "$wasm"
    elif [[ $BUILD == 1 ]]; then
        start=$(now)
        if make -C "$OUT/src/plugins/$lang/echo" >"$OUT/logs/build-$lang.log" 2>&1; then
            result "$lang" build_s "$(awk -v a="$start" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }')"
            cp "$OUT/src/plugins/$lang/echo/target/echo.wasm" "$wasm"
        else
            echo "$lang: make failed, see $OUT/logs/build-$lang.log"
        fi
    elif [[ -f $ROOT/plugins/$lang/echo/target/echo.wasm ]]; then
        cp "$ROOT/plugins/$lang/echo/target/echo.wasm" "$wasm"
    fi
    if [[ -f $wasm ]]; then
        LANGS_OK+=("$lang")
        result "$lang" size "$(stat -c %s "$wasm")"
        printf '%-10s %10s bytes  build %s s  sha256 %s\n' "$lang" "$(stat -c %s "$wasm")" \
            "$(awk -F'\t' -v l="$lang" '$1 == l && $2 == "build_s" { print $3 }' "$RESULTS")" \
            "$(sha256sum "$wasm" | cut -c1-12)"
    else
        echo "$lang: no echo.wasm, left out"
    fi
done

# Each language takes ten ports from PORT_BASE.
index=0
declare -A PORT
for lang in "${LANGS_OK[@]}"; do
    PORT[$lang]=$((PORT_BASE + 10 * index))
    index=$((index + 1))
done
serve_config() { # lang port mode memory [greeting]
    cat <<EOF
[[listener]]
name = "echo-$1"
address = "127.0.0.1:$2"
plugin = "$OUT/wasm/$1.wasm"
instance = "$3"
EOF
    if [[ -n $4 ]]; then
        printf '\n[listener.limits]\nmemory = "%s"\n' "$4"
    fi
    if [[ -n ${5:-} ]]; then
        printf '\n[listener.config]\ngreeting = "%s"\n' "$5"
    fi
}

# --- 2. compile: sandport check, cold and warm cache ------------------------------------
if wanted compile; then
    echo
    echo "== compile: sandport check, empty cache (cold) then the same cache (warm); ms"
    for lang in "${LANGS_OK[@]}"; do
        cold=() warm=() cold_wall=() warm_wall=()
        for rep in $(seq "$REPEAT"); do
            xdg=$OUT/xdg/$lang-check-$rep
            for pass in cold warm; do
                log=$OUT/logs/check-$lang-$rep-$pass.log
                start=$(now)
                XDG_CACHE_HOME=$xdg "$SANDPORT" check "$OUT/wasm/$lang.wasm" >"$log" 2>&1
                wall=$(awk -v a="$start" -v b="$(now)" 'BEGIN { printf "%.1f", (b - a) * 1000 }')
                from=$(loaded_from "$log")
                if [[ $pass == cold ]]; then
                    [[ $from == compiled ]] || { echo "$lang: cold check loaded from=$from"; exit 1; }
                    cold+=("$(took_ms "$log")") cold_wall+=("$wall")
                else
                    [[ $from == disk ]] || [[ $from == cache ]] || { echo "$lang: warm check loaded from=$from"; exit 1; }
                    warm+=("$(took_ms "$log")") warm_wall+=("$wall")
                fi
            done
        done
        result "$lang" compile_cold_ms "$(median "${cold[@]}")"
        result "$lang" compile_warm_ms "$(median "${warm[@]}")"
        result "$lang" check_cold_wall_ms "$(median "${cold_wall[@]}")"
        result "$lang" check_warm_wall_ms "$(median "${warm_wall[@]}")"
        printf '%-10s cold took %s (wall %s)   warm took %s (wall %s)\n' "$lang" \
            "${cold[*]}" "${cold_wall[*]}" "${warm[*]}" "${warm_wall[*]}"
    done
fi

# --- 3. start to serving ----------------------------------------------------------------
if wanted start; then
    echo
    echo "== start to serving: sandport serve until its listener accepts; ms"
    for lang in "${LANGS_OK[@]}"; do
        port=${PORT[$lang]}
        serve_config "$lang" "$port" shared "" >"$OUT/start-$lang.toml"
        cold=() warm=()
        for rep in $(seq "$REPEAT"); do
            xdg=$OUT/xdg/$lang-start-$rep
            for pass in cold warm; do
                log=$OUT/logs/start-$lang-$rep-$pass.log
                seconds=$(XDG_CACHE_HOME=$xdg client startup "$port" "$log" "$SANDPORT" serve --config "$OUT/start-$lang.toml" |
                    python3 -c 'import json, sys; print(round(json.load(sys.stdin)["seconds"] * 1000, 1))')
                if [[ $pass == cold ]]; then cold+=("$seconds"); else warm+=("$seconds"); fi
            done
        done
        result "$lang" start_cold_ms "$(median "${cold[@]}")"
        result "$lang" start_warm_ms "$(median "${warm[@]}")"
        printf '%-10s cold %s   warm %s\n' "$lang" "${cold[*]}" "${warm[*]}"
    done
fi

# Servers get 300 s to listen: a cold Python or JavaScript compile takes 15-40 s
# alone (the caches below are warm).
LISTEN_WAIT=300

# --- 4. per-connection instances -----------------------------------------------------------
if wanted greet; then
    echo
    echo "== per connection: connect to greeting, $CONNECTS connections in turn; VmRSS with $HOLD open"
    for lang in "${LANGS_OK[@]}"; do
        port=$((PORT[$lang] + 1))
        serve_config "$lang" "$port" per-connection "" hi >"$OUT/per-connection-$lang.toml"
        XDG_CACHE_HOME=$OUT/xdg/$lang-start-1 "$SANDPORT" serve --config "$OUT/per-connection-$lang.toml" \
            2>"$OUT/logs/per-connection-$lang.log" &
        pid=$!
        STARTED+=("$pid")
        wait_for_port "$port" "$LISTEN_WAIT"
        client greet "$port" 20 >/dev/null # warm-up, unmeasured
        client greet "$port" "$CONNECTS" >"$OUT/greet-$lang.json"
        client hold "$port" "$HOLD" "$pid" >"$OUT/hold-$lang.json"
        kill "$pid"
        wait "$pid" 2>/dev/null || true
        result "$lang" greet_p50_us "$(client field "$OUT/greet-$lang.json" p50_us)"
        result "$lang" greet_p90_us "$(client field "$OUT/greet-$lang.json" p90_us)"
        result "$lang" rss_per_conn_kb "$(client field "$OUT/hold-$lang.json" per_connection_kb)"
        result "$lang" anon_per_conn_kb "$(client field "$OUT/hold-$lang.json" anon_per_connection_kb)"
        result "$lang" pss_per_conn_kb "$(client field "$OUT/hold-$lang.json" pss_per_connection_kb)"
        printf '%-10s %s\n%-10s %s\n' "$lang" "$(cat "$OUT/greet-$lang.json")" "" "$(cat "$OUT/hold-$lang.json")"
        if grep -qiE 'fault|trap|refused' "$OUT/logs/per-connection-$lang.log"; then
            grep -iE 'fault|trap|refused' "$OUT/logs/per-connection-$lang.log" | head -3 | sed "s/^/$lang log: /"
        fi
    done
fi

# --- 5 and 6. the loadgen: one sandport per language, every one a target -------------------
if wanted loadgen; then
    declare -A PID
    TARGETS=() PIDS=()
    for lang in "${LANGS_OK[@]}"; do
        port=$((PORT[$lang] + 2))
        serve_config "$lang" "$port" shared "1 GiB" >"$OUT/echo-$lang.toml"
        XDG_CACHE_HOME=$OUT/xdg/$lang-start-1 "$SANDPORT" serve --config "$OUT/echo-$lang.toml" \
            2>"$OUT/logs/echo-$lang.log" &
        PID[$lang]=$!
        STARTED+=($!)
        TARGETS+=(--target "$lang=127.0.0.1:$port")
        PIDS+=(--pid "$lang=${PID[$lang]}")
    done
    for lang in "${LANGS_OK[@]}"; do
        wait_for_port $((PORT[$lang] + 2)) "$LISTEN_WAIT"
    done

    loadgen() { # name, then loadgen options
        local name=$1
        shift
        echo
        echo "== $name: sandport-loadgen echo ${TARGETS[*]} $*"
        "$LOADGEN" echo "${TARGETS[@]}" "${PIDS[@]}" --size 64 --rounds "$ROUNDS" --duration "$DURATION" --json "$@" \
            >"$OUT/$name.json" 2> >(tee "$OUT/$name.txt" >&2)
        sleep 0.2 # the tee
    }
    loadgen latency --connections 1
    loadgen throughput --connections "$CONNECTIONS"
    for lang in "${LANGS_OK[@]}"; do
        if grep -qiE 'fault|trap' "$OUT/logs/echo-$lang.log"; then
            grep -iE 'fault|trap' "$OUT/logs/echo-$lang.log" | head -3 | sed "s/^/$lang log: /"
        fi
        echo "$lang: VmRSS after the loadgen $(awk '/^VmRSS/ { print $2, $3 }' "/proc/${PID[$lang]}/status")"
    done
fi

# --- 7. idle per-connection instances at scale ----------------------------------------------
if wanted scale; then
    echo
    echo "== $HOLD_MANY idle per-connection instances: sandport-loadgen echo --hold, a fresh sandport each"
    ulimit -n $((2 * HOLD_MANY + 1000))
    for lang in "${LANGS_OK[@]}"; do
        port=$((PORT[$lang] + 3))
        {
            serve_config "$lang" "$port" per-connection ""
            printf '\n[listener.limits]\nmax-connections = %s\n' $((HOLD_MANY + 100))
        } >"$OUT/scale-$lang.toml"
        XDG_CACHE_HOME=$OUT/xdg/$lang-start-1 "$SANDPORT" serve --config "$OUT/scale-$lang.toml" \
            2>"$OUT/logs/scale-$lang.log" &
        pid=$!
        STARTED+=("$pid")
        wait_for_port "$port" "$LISTEN_WAIT"
        sleep 0.5
        pss_before=$(awk '/^Pss:/ { print $2 }' "/proc/$pid/smaps_rollup")
        "$LOADGEN" echo --hold --target "$lang=127.0.0.1:$port" --connections "$HOLD_MANY" --rounds 1 \
            --duration 3 --size 64 --timeout 120 --json >"$OUT/scale-$lang.json" 2>"$OUT/scale-$lang.txt" &
        loadgen_pid=$!
        pss_max=$pss_before
        while kill -0 "$loadgen_pid" 2>/dev/null; do
            pss=$(awk '/^Pss:/ { print $2 }' "/proc/$pid/smaps_rollup")
            ((pss > pss_max)) && pss_max=$pss
            sleep 0.5
        done
        wait "$loadgen_pid" || echo "$lang: the loadgen failed, see $OUT/scale-$lang.txt"
        sleep 1
        closed=$(awk '/^VmRSS/ { print $2 }' "/proc/$pid/status")
        pss_closed=$(awk '/^Pss:/ { print $2 }' "/proc/$pid/smaps_rollup")
        kill "$pid"
        wait "$pid" 2>/dev/null || true
        per_conn=$(client field "$OUT/scale-$lang.json" targets 0 per_connection)
        held=$(client field "$OUT/scale-$lang.json" targets 0 held)
        rss_before=$(client field "$OUT/scale-$lang.json" targets 0 rounds 0 rss_before)
        result "$lang" scale_held "$held"
        result "$lang" scale_rss_per_conn_kb "$(awk -v b="$per_conn" 'BEGIN { printf "%.1f", b / 1024 }')"
        result "$lang" scale_pss_per_conn_kb "$(awk -v a="$pss_before" -v b="$pss_max" -v n="$held" 'BEGIN { printf "%.1f", (b - a) / n }')"
        result "$lang" scale_closed_rss_mib "$(awk -v a="$rss_before" -v b="$closed" 'BEGIN { printf "%.1f", (b * 1024 - a) / 1048576 }')"
        result "$lang" scale_closed_pss_mib "$(awk -v a="$pss_before" -v b="$pss_closed" 'BEGIN { printf "%.1f", (b - a) / 1024 }')"
        printf '%-10s held %s: VmRSS %s KiB, Pss %s KiB per connection; above the start once closed: VmRSS %s MiB, Pss %s MiB\n' "$lang" "$held" \
            "$(awk -F'\t' -v l="$lang" '$1 == l && $2 == "scale_rss_per_conn_kb" { print $3 }' "$RESULTS")" \
            "$(awk -F'\t' -v l="$lang" '$1 == l && $2 == "scale_pss_per_conn_kb" { print $3 }' "$RESULTS")" \
            "$(awk -F'\t' -v l="$lang" '$1 == l && $2 == "scale_closed_rss_mib" { print $3 }' "$RESULTS")" \
            "$(awk -F'\t' -v l="$lang" '$1 == l && $2 == "scale_closed_pss_mib" { print $3 }' "$RESULTS")"
        if grep -qE ' (WARN|ERROR) ' "$OUT/logs/scale-$lang.log"; then
            grep -E ' (WARN|ERROR) ' "$OUT/logs/scale-$lang.log" | head -3 | sed "s/^/$lang log: /"
        fi
    done
fi

# --- 8. fresh connections: per-connection against shared (Rust) ------------------------------
if wanted reconnect && [[ " ${LANGS_OK[*]} " == *" rust "* ]]; then
    port=$((PORT[rust] + 4))
    {
        serve_config rust "$port" shared ""
        echo
        serve_config rust $((port + 1)) per-connection "" | sed 's/name = "echo-rust"/name = "echo-rust-per-connection"/'
    } >"$OUT/reconnect.toml"
    XDG_CACHE_HOME=$OUT/xdg/rust-start-1 "$SANDPORT" serve --config "$OUT/reconnect.toml" 2>"$OUT/logs/reconnect.log" &
    STARTED+=($!)
    wait_for_port $((port + 1)) "$LISTEN_WAIT"
    echo
    echo "== reconnect: sandport-loadgen echo --reconnect, Rust echo shared and per-connection"
    "$LOADGEN" echo --target "shared=127.0.0.1:$port" --target "per-connection=127.0.0.1:$((port + 1))" \
        --connections "$CONNECTIONS" --size 64 --rounds "$ROUNDS" --duration "$DURATION" --reconnect --json \
        >"$OUT/reconnect.json" 2> >(tee "$OUT/reconnect.txt" >&2)
    sleep 0.2 # the tee
fi

# --- the table ---------------------------------------------------------------------------
python3 - "$RESULTS" "$OUT/latency.json" "$OUT/throughput.json" "$LANGS" >"$OUT/summary.md" <<'PY'
import json, sys
results_path, latency_path, throughput_path, langs = sys.argv[1:]
label = {"rust": "Rust", "c": "C", "zig": "Zig", "python": "Python", "js": "JavaScript"}
results = {}
for line in open(results_path):
    lang, key, value = line.rstrip("\n").split("\t")
    results.setdefault(lang, {})[key] = float(value)
def targets(path):
    try:
        return {t["name"]: t for t in json.load(open(path))["targets"]}
    except (OSError, ValueError):
        return {}
latency, throughput = targets(latency_path), targets(throughput_path)

def ms(v):
    if v is None: return "n/a"
    if v >= 1000: return f"{v / 1000:.1f} s"
    if v >= 10: return f"{v:.0f} ms"
    return f"{v:.1f} ms"
def us(v): return "n/a" if v is None else (f"{v / 1000:.2f} ms" if v >= 1000 else f"{v:.0f} µs")
def spaced(n): return f"{n:,.0f}".replace(",", " ")

print("| language | component | build (make, clean) | compile cold / cached | start to serving cold / warm "
      "| per-connection: connect to greeting p50 (p90) | per open connection: VmRSS / Pss "
      "| RECV round trip, 1 connection: mean / p50 | echo 16 conns: req/s, vs the first "
      "| server CPU per request (vs the first) |")
print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
for lang in langs.split():
    r = results.get(lang)
    if r is None or "size" not in r:
        print(f"| {label[lang]} | missing | | | | | | | | |")
        continue
    g = lambda k: r.get(k)
    build = f"{g('build_s'):.1f} s" if g("build_s") is not None else "n/a"
    lat, thr = latency.get(lang), throughput.get(lang)
    if lat and lat["requests_per_sec"] > 0:
        rtt = f"{1e6 / lat['requests_per_sec']:.0f} µs / {lat['latency']['p50_us']:.0f} µs"
    else:
        rtt = "n/a"
    if thr and thr["requests_per_sec"] > 0:
        rate = f"{spaced(thr['requests_per_sec'])} req/s, {thr['ratio']:.2f}"
        cpu = thr.get("cpu_per_request_us")
        ratio = thr.get("cpu_ratio")
        cpu = "n/a" if cpu is None else f"{cpu:.2f} µs ({ratio:.2f})" if ratio is not None else f"{cpu:.2f} µs"
    else:
        rate = cpu = "n/a"
    kib = lambda v: "n/a" if v is None else (f"{v / 1024:.1f} MiB" if v >= 1024 else f"{v:.0f} KiB")
    rss = f"{kib(g('rss_per_conn_kb'))} / {kib(g('pss_per_conn_kb'))}"
    print(f"| {label[lang]} | {spaced(r['size'])} B | {build} | {ms(g('compile_cold_ms'))} / {ms(g('compile_warm_ms'))} "
          f"| {ms(g('start_cold_ms'))} / {ms(g('start_warm_ms'))} "
          f"| {us(g('greet_p50_us'))} ({us(g('greet_p90_us'))}) | {rss} | {rtt} | {rate} | {cpu} |")
PY
python3 - "$RESULTS" "$OUT/reconnect.json" "$LANGS" >>"$OUT/summary.md" <<'PY'
import json, sys
results_path, reconnect_path, langs = sys.argv[1:]
label = {"rust": "Rust", "c": "C", "zig": "Zig", "python": "Python", "js": "JavaScript"}
results = {}
for line in open(results_path):
    lang, key, value = line.rstrip("\n").split("\t")
    results.setdefault(lang, {})[key] = float(value)
scaled = [lang for lang in langs.split() if "scale_held" in results.get(lang, {})]
if scaled:
    print("\n| language | idle per-connection instances | VmRSS per connection | Pss per connection "
          "| kept once closed: VmRSS / Pss |")
    print("| --- | --- | --- | --- | --- |")
    for lang in scaled:
        r = results[lang]
        print(f"| {label[lang]} | {r['scale_held']:.0f} | {r['scale_rss_per_conn_kb']:.1f} KiB | {r['scale_pss_per_conn_kb']:.1f} KiB "
              f"| {r['scale_closed_rss_mib']:.1f} MiB / {r.get('scale_closed_pss_mib', float('nan')):.1f} MiB |")
try:
    targets = json.load(open(reconnect_path))["targets"]
except (OSError, ValueError):
    targets = []
if targets:
    print("\n| Rust echo, a fresh connection per request | connections/s | vs shared | server CPU per connection | vs shared |")
    print("| --- | --- | --- | --- | --- |")
    for t in targets:
        print(f"| {t['name']} | {t['requests_per_sec']:,.0f} | {t['ratio']:.2f} | {t['cpu_per_request_us']:.1f} µs | {t['cpu_ratio']:.2f} |".replace(",", " "))
PY
echo
cat "$OUT/summary.md"
