#!/usr/bin/env bash
# What recycling costs a listener's clients (BENCHMARKS.md, "What a recycle costs"):
# the echo under the loadgen on two sandports side by side, one whose instance is
# recycled again and again and one left alone, alternating round by round.
#
# Both servers run one worker and one shared echo listener of the same plugin. The one
# left alone has `memory = "4 GiB"`, so that it never reaches its limit in a run (the
# Python and JavaScript echoes leak); the recycled one has `memory = MEMORY` and
# `[listener.recycle]` as RECYCLE says (by default `events = 20000`: a recycle every
# 20 000 events, each moving every connection to a fresh instance when the plugin
# migrates; for the Python echo as it would be served, MEMORY="64 MiB" RECYCLE='memory =
# "75%"'). The
# loadgen drives both in one run (ping-pong, CONNECTIONS connections, SIZE bytes),
# `recycled` second, so its ratios are against the one left alone. The report: the
# loadgen's table (rate, p50/p99/p999/max latency, server CPU per request), and the
# recycles the recycled server logged with what each took on its loop (`took=`,
# making the fresh instance is not in it: the maker thread does that).
#
# LANG picks the plugin: `rust` (the migrate-faults fixture as a quiet echo that
# migrates; the Rust example echo does not migrate), `python`, `js` (plugins/LANG/echo,
# built with `make` if missing), or `rust-drain` (the Rust echo, which drains instead).
#
# Settings (environment): LANG (python), RECYCLE ('events = 20000'), MEMORY (1 GiB), CONNECTIONS (4),
# SIZE (64), ROUNDS (5), DURATION (10), PORT_BASE (18900), OUT
# (/tmp/sandport-recycle-bench). Build the host first: `cargo build --release -p
# sandport -p sandport-loadgen`.
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD
LANG_=${LANG:-python}
RECYCLE=${RECYCLE:-events = 20000}
MEMORY=${MEMORY:-1 GiB}
CONNECTIONS=${CONNECTIONS:-4}
SIZE=${SIZE:-64}
ROUNDS=${ROUNDS:-5}
DURATION=${DURATION:-10}
PORT_BASE=${PORT_BASE:-18900}
OUT=${OUT:-/tmp/sandport-recycle-bench}
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
rm -rf "$OUT" && mkdir -p "$OUT"

settings=""
case $LANG_ in
rust)
    cargo build --profile plugin --target wasm32-wasip2 -p fixture-migrate-faults
    plugin=$TARGET/wasm32-wasip2/plugin/fixture_migrate_faults.wasm
    settings=$'[listener.config]\nhand-over = "quiet"\ntake-over = "quiet"'
    ;;
rust-drain)
    cargo build --profile plugin --target wasm32-wasip2 -p echo
    plugin=$TARGET/wasm32-wasip2/plugin/echo.wasm
    ;;
python | js)
    plugin=$ROOT/plugins/$LANG_/echo/target/echo.wasm
    make -C "plugins/$LANG_/echo"
    ;;
*)
    echo "LANG must be rust, rust-drain, python or js" >&2
    exit 2
    ;;
esac

serve() { # name port memory recycle-table
    cat >"$OUT/$1.toml" <<TOML
workers = 1
cache-dir = "$OUT/cache"
[[listener]]
name = "echo"
address = "127.0.0.1:$2"
plugin = "$plugin"
[listener.limits]
memory = "$3"
$4
$settings
TOML
    "$TARGET/release/sandport" serve --config "$OUT/$1.toml" >/dev/null 2>"$OUT/$1.log" &
    echo $!
}

ready() { # port
    for _ in $(seq 600); do
        (exec 3<>/dev/tcp/127.0.0.1/$1) 2>/dev/null && return
        sleep 0.1
    done
}
# One after the other: the second loads what the first compiled into the cache.
alone=$(serve alone $PORT_BASE "4 GiB" "")
trap 'kill $alone 2>/dev/null || true' EXIT
ready $PORT_BASE
recycled=$(serve recycled $((PORT_BASE + 1)) "$MEMORY" $'[listener.recycle]\n'"$RECYCLE")
trap 'kill $alone $recycled 2>/dev/null || true' EXIT
ready $((PORT_BASE + 1))

"$TARGET/release/sandport-loadgen" echo --size "$SIZE" --connections "$CONNECTIONS" \
    --duration "$DURATION" --rounds "$ROUNDS" \
    --target alone=127.0.0.1:$PORT_BASE --target recycled=127.0.0.1:$((PORT_BASE + 1)) | tee "$OUT/report.txt"

grep 'recycled a worn instance' "$OUT/recycled.log" >"$OUT/recycles.txt" || true
echo "recycles: $(wc -l <"$OUT/recycles.txt") ($RECYCLE); faults: alone $(grep -c 'handler failed' "$OUT/alone.log" || true), recycled $(grep -c 'handler failed' "$OUT/recycled.log" || true)"
# took= as microseconds, then the median and the worst.
sed -n 's/.*took=\([0-9.]*\)\([mµn]*s\).*/\1 \2/p' "$OUT/recycles.txt" |
    awk '{ v = $1; if ($2 == "ms") v *= 1000; else if ($2 == "s") v *= 1e6; else if ($2 == "ns") v /= 1000; print v }' |
    sort -n | awk '{ v[NR] = $1 } END { if (NR) printf "took on the loop: median %.0f us, worst %.0f us\n", v[int((NR + 1) / 2)], v[NR] }'
grep -o 'moved=[0-9]* draining=[0-9]*' "$OUT/recycles.txt" | sort | uniq -c
