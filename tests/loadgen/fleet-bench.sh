#!/usr/bin/env bash
# The fleet figures of BENCHMARKS.md, reproducible: a real OCI registry (Debian's
# docker-registry) on loopback and sandport nodes pulling from it.
#
#   1. pull and start: `sandport serve` of one listener whose plugin is an oci://
#      reference, from exec to the `ready` line, for the Rust echo (tens of KB) and the
#      JavaScript echo (about 12 MB): cold (empty store, empty compile cache) and from
#      the store (a restart: nothing pulled, nothing compiled);
#   2. push to three nodes serving: three nodes follow one tag (follow-ms = $FOLLOW_MS);
#      the time from the start of `sandport push` to the last node's `took over` line;
#   3. requests/s through the loadgen on a listener whose tag is pushed to every
#      $PUSH_EVERY seconds for the whole run (every node swaps it), against a listener of
#      the same node and plugin whose tag is left alone, rounds alternating, same run.
#
# Medians of $ROUNDS runs. Installs docker-registry from Debian if it is missing.
# Settings (environment): ROUNDS (5), FOLLOW_MS (1000), PUSH_EVERY (2), DURATION (5),
# CONNECTIONS (16), OUT (/tmp/sandport-fleet-bench).
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD

ROUNDS=${ROUNDS:-5}
FOLLOW_MS=${FOLLOW_MS:-1000}
PUSH_EVERY=${PUSH_EVERY:-2}
DURATION=${DURATION:-5}
CONNECTIONS=${CONNECTIONS:-16}
OUT=${OUT:-/tmp/sandport-fleet-bench}

command -v docker-registry >/dev/null || { apt-get update -qq && apt-get install -y -qq docker-registry; }
cargo build --release -p sandport --bin sandport -p sandport-loadgen --bin sandport-loadgen
cargo build --profile plugin --target wasm32-wasip2 -p echo -p fixture-old-wit
make -s -C plugins/js/echo
SANDPORT=$ROOT/target/release/sandport
LOADGEN=$ROOT/target/release/sandport-loadgen
RUST_ECHO=$ROOT/target/wasm32-wasip2/plugin/echo.wasm
RUST_ECHO_NEXT=$ROOT/target/wasm32-wasip2/plugin/fixture_old_wit.wasm
JS_ECHO=$ROOT/plugins/js/echo/target/echo.wasm

rm -rf "$OUT" && mkdir -p "$OUT"
PIDS=()
trap 'kill "${PIDS[@]}" 2>/dev/null || true' EXIT

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# --- the registry -----------------------------------------------------------------
REGISTRY=127.0.0.1:$(free_port)
cat >"$OUT/registry.yml" <<EOF
version: 0.1
log: { level: error, accesslog: { disabled: true } }
storage: { filesystem: { rootdirectory: $OUT/registry } }
http: { addr: $REGISTRY }
EOF
docker-registry serve "$OUT/registry.yml" 2>"$OUT/registry.log" &
PIDS+=($!)
until curl -fs "http://$REGISTRY/v2/" >/dev/null; do sleep 0.1; done

push() { "$SANDPORT" push "$1" "oci://$REGISTRY/$2" --insecure 2>>"$OUT/push.log"; }

# now_ms: milliseconds since the epoch.
now_ms() { date +%s%3N; }

# median of the numbers on stdin.
median() { sort -n | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'; }

# node NAME CONFIG_EXTRA LISTENERS...: write NAME's config, one listener per
# `name=port=reference` argument, its store and cache in $OUT/NAME.
node_config() {
    local name=$1 extra=$2
    shift 2
    {
        echo "workers = 1"
        echo "cache-dir = \"$OUT/$name/cache\""
        echo "[oci]"
        echo "store = \"$OUT/$name/store\""
        echo "insecure = [\"$REGISTRY\"]"
        for listener in "$@"; do
            IFS='=' read -r lname port reference <<<"$listener"
            printf '\n[[listener]]\nname = "%s"\naddress = "127.0.0.1:%s"\nplugin = "oci://%s/%s"\n%s\n' \
                "$lname" "$port" "$REGISTRY" "$reference" "$extra"
        done
    } >"$OUT/$name.toml"
}

# serve NAME: start node NAME in the background (its log in $OUT/NAME.log); sets PID.
serve() {
    "$SANDPORT" serve --config "$OUT/$1.toml" 2>"$OUT/$1.log" &
    PID=$!
    PIDS+=("$PID")
}

# wait_log NAME TEXT [COUNT]: until NAME's log has TEXT COUNT times (default 1).
wait_log() {
    until [[ $(grep -c -- "$2" "$OUT/$1.log" 2>/dev/null) -ge ${3:-1} ]]; do sleep 0.01; done
}

# --- 1. pull and start --------------------------------------------------------------
echo "## 1. pull and start (ms, median of $ROUNDS)"
push "$RUST_ECHO" start/rust:v1 >/dev/null
push "$JS_ECHO" start/js:v1 >/dev/null
printf '| plugin | size | cold (pull + compile) | from the store |\n| --- | --- | --- | --- |\n'
for plugin in rust js; do
    file=$RUST_ECHO
    [[ $plugin == js ]] && file=$JS_ECHO
    cold=() warm=()
    for round in $(seq "$ROUNDS"); do
        rm -rf "$OUT/start-$plugin"
        node_config "start-$plugin" "" "app=$(free_port)=start/$plugin:v1"
        for kind in cold warm; do
            start=$(now_ms)
            serve "start-$plugin"
            wait_log "start-$plugin" "ready workers="
            took=$(($(now_ms) - start))
            kill -TERM "$PID" && wait "$PID" || true
            if [[ $kind == cold ]]; then cold+=("$took"); else warm+=("$took"); fi
        done
    done
    size=$(du -h "$file" | cut -f1)
    printf '| %s echo | %s | %s | %s |\n' "$plugin" "$size" \
        "$(printf '%s\n' "${cold[@]}" | median)" "$(printf '%s\n' "${warm[@]}" | median)"
done

# --- 2. push to three nodes serving -------------------------------------------------
echo
echo "## 2. sandport push to three nodes serving (ms, follow-ms = $FOLLOW_MS, median of $ROUNDS)"
push "$RUST_ECHO" fleet/app:stable >/dev/null
for n in 1 2 3; do
    node_config "node$n" "follow-ms = $FOLLOW_MS" "app=$(free_port)=fleet/app:stable"
    serve "node$n"
done
for n in 1 2 3; do wait_log "node$n" "ready workers="; done
reached=()
for round in $(seq "$ROUNDS"); do
    file=$RUST_ECHO_NEXT
    ((round % 2 == 0)) && file=$RUST_ECHO
    start=$(now_ms)
    push "$file" fleet/app:stable >/dev/null
    for n in 1 2 3; do wait_log "node$n" "digest took over" "$round"; done
    reached+=($(($(now_ms) - start)))
done
echo "push to all three serving: median $(printf '%s\n' "${reached[@]}" | median) ms (runs: ${reached[*]})"

# --- 3. requests/s during a fleet-wide swap -----------------------------------------
echo
echo "## 3. echo through the loadgen on node 1: a listener swapped every ${PUSH_EVERY}s on every node, against one left alone"
push "$RUST_ECHO" swap/app:moving >/dev/null
push "$RUST_ECHO" swap/app:still >/dev/null
LEFT=$(free_port)
MOVING=$(free_port)
for n in 1 2 3; do
    if [[ $n == 1 ]]; then left=$LEFT moving=$MOVING; else left=$(free_port) moving=$(free_port); fi
    node_config "swap$n" "follow-ms = $FOLLOW_MS" "left=$left=swap/app:still" "swapped=$moving=swap/app:moving"
    serve "swap$n"
done
for n in 1 2 3; do wait_log "swap$n" "ready workers="; done
(
    i=0
    while true; do
        file=$RUST_ECHO_NEXT
        ((i % 2 == 1)) && file=$RUST_ECHO
        push "$file" swap/app:moving >/dev/null
        i=$((i + 1))
        sleep "$PUSH_EVERY"
    done
) &
PIDS+=($!)
"$LOADGEN" echo --target "left=127.0.0.1:$LEFT" --target "swapped=127.0.0.1:$MOVING" \
    --connections "$CONNECTIONS" --duration "$DURATION" --rounds "$ROUNDS" 2>"$OUT/swap-rounds.txt" |
    tee "$OUT/swap.txt"
echo "swaps that took over on node 1 during the run: $(grep -c 'digest took over' "$OUT/swap1.log")"
