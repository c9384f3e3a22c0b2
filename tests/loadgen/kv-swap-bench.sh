#!/usr/bin/env bash
# What a swap costs the kv listener's clients (BENCHMARKS.md, "A swap of the kv
# plugin"): GET latency under redis-benchmark while the plugin is swapped once, and in
# the same run without a swap, alternating round by round.
#
# One sandport, one worker, the kv plugin holding KEYS keys (loaded with `redis-cli
# --pipe`). Each round runs `redis-benchmark -t get` (CONNECTIONS clients, REQUESTS
# requests on random keys of the key space) twice: once left alone, once with a SIGHUP
# half a second in that changes `[listener.config]`, so the kv plugin's key space and
# every client move to a new version (hand-over-instance, take-over-instance, then each
# connection). Reports each run's requests/s, p50, p99 and worst latency, and the
# migration's own time from the log (`migrated to version N ... took=`), medians of
# ROUNDS rounds.
#
# Settings (environment): ROUNDS (5), KEYS (100000), REQUESTS (400000), CONNECTIONS
# (50), PIPELINE (1), PORT (18700), OUT (/tmp/sandport-kv-swap-bench).
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD
ROUNDS=${ROUNDS:-5}
KEYS=${KEYS:-100000}
REQUESTS=${REQUESTS:-400000}
CONNECTIONS=${CONNECTIONS:-50}
PIPELINE=${PIPELINE:-1}
PORT=${PORT:-18700}
OUT=${OUT:-/tmp/sandport-kv-swap-bench}
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}

command -v redis-benchmark >/dev/null || { apt-get update -qq && apt-get install -y -qq redis-tools; }
cargo build --release -p sandport --bin sandport
cargo build --profile plugin --target wasm32-wasip2 -p kv
rm -rf "$OUT" && mkdir -p "$OUT"

config() { # revision
    cat <<TOML
workers = 1
cache-dir = "$OUT/cache"
[[listener]]
name = "kv"
address = "127.0.0.1:$PORT"
plugin = "$TARGET/wasm32-wasip2/plugin/kv.wasm"
[listener.config]
maxmemory = "48 MiB"
revision = "$1"
TOML
}

config 0 >"$OUT/sandport.toml"
"$TARGET/release/sandport" serve --config "$OUT/sandport.toml" 2>"$OUT/sandport.log" &
SERVER=$!
trap 'kill $SERVER 2>/dev/null || true' EXIT
for _ in $(seq 100); do
    redis-cli -p "$PORT" ping >/dev/null 2>&1 && break
    sleep 0.1
done
python3 -c "
import sys
out = sys.stdout.buffer
for i in range($KEYS):
    k, v = b'key:%012d' % i, b'value-%d' % i
    out.write(b'*3\r\n\$3\r\nSET\r\n\$%d\r\n%s\r\n\$%d\r\n%s\r\n' % (len(k), k, len(v), v))
" | redis-cli -p "$PORT" --pipe >"$OUT/load.txt"
echo "loaded: $(redis-cli -p "$PORT" dbsize) keys"

# One redis-benchmark run; with "swap", a SIGHUP with revision $2 half a second in.
run() { # kind revision
    local csv=$OUT/$1-$2.csv
    redis-benchmark -p "$PORT" -t get -r "$KEYS" -n "$REQUESTS" -c "$CONNECTIONS" -P "$PIPELINE" \
        --precision 3 --csv >"$csv" 2>"$OUT/$1-$2.err" &
    local bench=$!
    if [[ $1 == swap ]]; then
        sleep 0.5
        config "$2" >"$OUT/sandport.toml"
        kill -HUP $SERVER
    fi
    wait $bench
    if grep -qi error "$OUT/$1-$2.err" "$csv"; then
        echo "redis-benchmark saw an error in $1 round $2" >&2
        exit 1
    fi
    # "GET","rps","avg","min","p50","p95","p99","max"
    tail -1 "$csv" | tr -d '"' | awk -F, -v kind="$1" '{ print kind, $2, $5, $7, $8 }' >>"$OUT/results.txt"
}

for round in $(seq "$ROUNDS"); do
    run steady "$round"
    run swap "$round"
done
sleep 0.5
echo "keys after $ROUNDS swaps: $(redis-cli -p "$PORT" dbsize)"
grep -o 'migrated to version [0-9]* .*took=[^ ]*' "$OUT/sandport.log" >"$OUT/migrations.txt" || true

median() { sort -n | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'; }
printf '%-8s %12s %10s %10s %10s\n' run requests/s p50-ms p99-ms max-ms
for kind in steady swap; do
    row=$kind
    for column in 2 3 4 5; do
        row+=" $(awk -v k="$kind" -v c="$column" '$1 == k { print $c }' "$OUT/results.txt" | median)"
    done
    printf '%-8s %12s %10s %10s %10s\n' $row
done
echo "migrations (one per swap round): $(wc -l <"$OUT/migrations.txt")"
sed 's/.*took=/took=/' "$OUT/migrations.txt"
