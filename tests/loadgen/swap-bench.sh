#!/usr/bin/env bash
# The echo's throughput and latency while its plugin is swapped once a second, next to
# the same echo left alone, in the same run (BENCHMARKS.md, "Swapping under load").
#
# Two sandport processes, each serving the echo per-worker on 2 workers: "steady" is
# never touched; "swapping" gets a SIGHUP every second with a changed
# `[listener.config]`, so every second a new version is loaded (from the in-memory
# cache), pre-flighted and swapped in on both workers, and the old instances drain.
# The loadgen alternates rounds between the two and reports requests/s, latency
# percentiles and server CPU per request. Kept connections stay on the version they
# started with (`drain-timeout-ms` is an hour here); with RECONNECT=1 every request is
# a fresh connection, so each meets the newest version.
#
# Settings (environment): ROUNDS (5), DURATION (5), CONNECTIONS (16), SIZE (64),
# RECONNECT (unset), PORT_BASE (18600), OUT (/tmp/sandport-swap-bench).
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD
ROUNDS=${ROUNDS:-5}
DURATION=${DURATION:-5}
CONNECTIONS=${CONNECTIONS:-16}
SIZE=${SIZE:-64}
PORT_BASE=${PORT_BASE:-18600}
OUT=${OUT:-/tmp/sandport-swap-bench}

cargo build --release -p sandport --bin sandport -p sandport-loadgen --bin sandport-loadgen
cargo build --profile plugin --target wasm32-wasip2 -p echo
rm -rf "$OUT" && mkdir -p "$OUT"

config() { # name port generation
    cat <<TOML
workers = 2
cache-dir = "$OUT/cache"
[[listener]]
name = "$1"
address = "127.0.0.1:$2"
plugin = "$ROOT/target/wasm32-wasip2/plugin/echo.wasm"
instance = "per-worker"
drain-timeout-ms = 3600000
[listener.config]
generation = $3
TOML
}

config steady $PORT_BASE 0 >"$OUT/steady.toml"
config swapping $((PORT_BASE + 1)) 0 >"$OUT/swapping.toml"
"$ROOT/target/release/sandport" serve --config "$OUT/steady.toml" 2>"$OUT/steady.log" &
STEADY=$!
"$ROOT/target/release/sandport" serve --config "$OUT/swapping.toml" 2>"$OUT/swapping.log" &
SWAPPING=$!
trap 'kill $SWAPPER $STEADY $SWAPPING 2>/dev/null; wait 2>/dev/null' EXIT
sleep 1

(
    generation=0
    while true; do
        generation=$((generation + 1))
        config swapping $((PORT_BASE + 1)) $generation >"$OUT/swapping.toml"
        kill -HUP $SWAPPING
        sleep 1
    done
) &
SWAPPER=$!

"$ROOT/target/release/sandport-loadgen" echo --size "$SIZE" --connections "$CONNECTIONS" \
    --rounds "$ROUNDS" --duration "$DURATION" ${RECONNECT:+--reconnect} \
    --target steady=127.0.0.1:$PORT_BASE --target swapping=127.0.0.1:$((PORT_BASE + 1)) \
    --pid steady=$STEADY --pid swapping=$SWAPPING | tee "$OUT/loadgen.txt"

kill $SWAPPER
echo "swaps that took over: $(grep -c 'took over' "$OUT/swapping.log"), refused: $(grep -c 'new version refused' "$OUT/swapping.log" || true)"
