#!/usr/bin/env bash
# The runs behind BENCHMARKS.md, reproducible: builds what they need, starts sandport
# (echo, http-hello, the burn fixture), the native echo and two nginx (1 and 2
# workers), and measures, in the same run, alternating targets round by round:
#
#   1. HTTP: wrk against sandport's http-hello, nginx with 1 worker and with 2, with
#      each server's CPU time (utime+stime from /proc/PID/stat) per request;
#   2. echo at 64 B through the loadgen: native echo and the wasm echo;
#   3. the burn fixture through the loadgen: burn-us = 0 and burn-us = $BURN_US.
#
# Medians of $ROUNDS rounds; ratios are against the first target of each run. The
# machine is shared and noisy: compare ratios from one run, not absolute figures
# across runs. Installs nginx-light and wrk from Debian if they are missing.
#
# Settings (environment): ROUNDS (3), DURATION (5, seconds per round), BURN_US (50),
# CONNECTIONS (16, loadgen), WRK_CONNECTIONS (50), PORT_BASE (18000), OUT
# (/tmp/sandport-bench: configs, logs, raw output), and for the host after issue 8:
# WORKERS (unset: no `workers` line) and HTTP_INSTANCE (unset: http-hello's default
# instance mode; e.g. `per-worker`).
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD

ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-5}
BURN_US=${BURN_US:-50}
CONNECTIONS=${CONNECTIONS:-16}
WRK_CONNECTIONS=${WRK_CONNECTIONS:-50}
PORT_BASE=${PORT_BASE:-18000}
OUT=${OUT:-/tmp/sandport-bench}

ECHO_PORT=$PORT_BASE
BURN0_PORT=$((PORT_BASE + 1))
BURN_PORT=$((PORT_BASE + 2))
HTTP_PORT=$((PORT_BASE + 80))
NGINX1_PORT=$((PORT_BASE + 90))
NGINX2_PORT=$((PORT_BASE + 91))
NATIVE_PORT=$((PORT_BASE + 100))

if ! command -v wrk >/dev/null || ! command -v nginx >/dev/null; then
    apt-get update -qq && apt-get install -y -qq nginx-light wrk
fi

cargo build --release -p sandport --bin sandport --example native_echo -p sandport-loadgen --bin sandport-loadgen
cargo build --profile plugin --target wasm32-wasip2 -p echo -p http-hello -p fixture-burn
WASM=$ROOT/target/wasm32-wasip2/plugin
LOADGEN=$ROOT/target/release/sandport-loadgen

rm -rf "$OUT" && mkdir -p "$OUT"

# --- sandport ---------------------------------------------------------------------
{
    if [[ -n ${WORKERS:-} ]]; then
        echo "workers = $WORKERS"
    fi
    cat <<EOF
[[listener]]
name = "echo"
address = "127.0.0.1:$ECHO_PORT"
plugin = "$WASM/echo.wasm"

[[listener]]
name = "http-hello"
address = "127.0.0.1:$HTTP_PORT"
plugin = "$WASM/http_hello.wasm"
EOF
    if [[ -n ${HTTP_INSTANCE:-} ]]; then
        echo "instance = \"$HTTP_INSTANCE\""
    fi
    for listener in "burn-0 $BURN0_PORT 0" "burn-$BURN_US $BURN_PORT $BURN_US"; do
        read -r name port us <<<"$listener"
        cat <<EOF

[[listener]]
name = "$name"
address = "127.0.0.1:$port"
plugin = "$WASM/fixture_burn.wasm"

[listener.config]
burn-us = $us
EOF
    done
} >"$OUT/sandport.toml"

# --- nginx, as in ../shared/peers.md, with 1 and with 2 workers ---------------------
for workers in 1 2; do
    port=$((PORT_BASE + 89 + workers))
    mkdir -p "$OUT/nginx-$workers"
    cat >"$OUT/nginx-$workers/nginx.conf" <<EOF
worker_processes $workers;
daemon off;
pid $OUT/nginx-$workers/nginx.pid;
error_log $OUT/nginx-$workers/error.log;
events { worker_connections 4096; }
http {
  access_log off;
  keepalive_requests 10000000;
  server {
    listen 127.0.0.1:$port reuseport;
    location / { default_type text/plain; return 200 "hello from sandport\n"; }
  }
}
EOF
done

STARTED=()
stop_all() {
    for pid in "${STARTED[@]}"; do
        kill "$pid" 2>/dev/null || true
    done
    wait 2>/dev/null || true
}
trap stop_all EXIT

target/release/sandport serve --config "$OUT/sandport.toml" 2>"$OUT/sandport.log" &
SANDPORT_PID=$!
STARTED+=("$SANDPORT_PID")
target/release/examples/native_echo "127.0.0.1:$NATIVE_PORT" 2>"$OUT/native_echo.log" &
STARTED+=($!)
nginx -c "$OUT/nginx-1/nginx.conf" &
NGINX1_PID=$!
STARTED+=("$NGINX1_PID")
nginx -c "$OUT/nginx-2/nginx.conf" &
NGINX2_PID=$!
STARTED+=("$NGINX2_PID")

# Waits until PORT on 127.0.0.1 accepts connections, for at most 60 s.
wait_for_port() {
    local deadline=$((SECONDS + 60))
    until (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; do
        if ((SECONDS >= deadline)); then
            echo "nothing listens on port $1 after 60 s; logs in $OUT" >&2
            exit 1
        fi
        sleep 0.1
    done
}
for port in $ECHO_PORT $BURN0_PORT $BURN_PORT $HTTP_PORT $NGINX1_PORT $NGINX2_PORT $NATIVE_PORT; do
    wait_for_port "$port"
done

# The PIDs of a server: the process and its children (nginx's workers).
server_pids() {
    echo "$1" $(pgrep -P "$1" || true)
}

# utime + stime, in clock ticks, summed over the PIDs given.
cpu_ticks() {
    local total=0 pid stat fields
    for pid in "$@"; do
        stat=$(<"/proc/$pid/stat")
        # Field 2, the command, is in parentheses and may hold spaces: count after it.
        read -ra fields <<<"${stat##*) }"
        total=$((total + fields[11] + fields[12]))
    done
    echo "$total"
}
CLK_TCK=$(getconf CLK_TCK)

echo "== $(date -u '+%Y-%m-%d %H:%M UTC'), $(nproc) CPUs, load $(cut -d' ' -f1-3 /proc/loadavg)"
echo "== sandport $(git rev-parse --short HEAD), config $OUT/sandport.toml"

# --- 1. HTTP: wrk, alternating sandport, nginx 1 worker, nginx 2 workers -------------
declare -A HTTP_PID=([sandport]=$SANDPORT_PID [nginx-1]=$NGINX1_PID [nginx-2]=$NGINX2_PID)
declare -A HTTP_URL=(
    [sandport]="http://127.0.0.1:$HTTP_PORT/"
    [nginx-1]="http://127.0.0.1:$NGINX1_PORT/"
    [nginx-2]="http://127.0.0.1:$NGINX2_PORT/"
)
HTTP_TARGETS=(sandport nginx-1 nginx-2)
WRK=(wrk -t1 "-c$WRK_CONNECTIONS" "-d${DURATION}s")
echo
echo "== HTTP: ${WRK[*]} URL, $ROUNDS rounds, alternating"
for target in "${HTTP_TARGETS[@]}"; do
    # Warm-up, unmeasured: nginx's workers and sandport's instance touch their memory.
    wrk -t1 "-c$WRK_CONNECTIONS" -d1s "${HTTP_URL[$target]}" >/dev/null
done
: >"$OUT/http.tsv"
for round in $(seq "$ROUNDS"); do
    for target in "${HTTP_TARGETS[@]}"; do
        read -ra pids <<<"$(server_pids "${HTTP_PID[$target]}")"
        before=$(cpu_ticks "${pids[@]}")
        "${WRK[@]}" "${HTTP_URL[$target]}" >"$OUT/wrk-$target-$round.txt"
        after=$(cpu_ticks "${pids[@]}")
        requests=$(awk '/requests in/ { print $1 }' "$OUT/wrk-$target-$round.txt")
        rate=$(awk '/^Requests\/sec/ { print $2 }' "$OUT/wrk-$target-$round.txt")
        errors=$(awk '/Socket errors|Non-2xx/ { print }' "$OUT/wrk-$target-$round.txt")
        cpu_us=$(awk -v t=$((after - before)) -v hz="$CLK_TCK" -v n="$requests" 'BEGIN { printf "%.2f", t / hz * 1e6 / n }')
        printf '%s\t%s\t%s\t%s\n' "$target" "$round" "$rate" "$cpu_us" >>"$OUT/http.tsv"
        printf 'round %s %-8s %10.0f req/s  %6s µs server CPU per request  (pids %s)%s\n' \
            "$round" "$target" "$rate" "$cpu_us" "${pids[*]}" "${errors:+  $errors}"
    done
done
echo
# Medians per target, and ratios to sandport's.
awk -F'\t' '
    function median(list,    n, v, i, j, t) {
        n = split(list, v, " ")
        for (i = 1; i <= n; i++) for (j = i + 1; j <= n; j++) if (v[j] + 0 < v[i] + 0) { t = v[i]; v[i] = v[j]; v[j] = t }
        return n % 2 ? v[(n + 1) / 2] : (v[n / 2] + v[n / 2 + 1]) / 2
    }
    { if (!($1 in rate)) order[++count] = $1; rate[$1] = rate[$1] " " $3; cpu[$1] = cpu[$1] " " $4 }
    END {
        printf "%-10s %12s %14s %16s %18s\n", "target", "req/s", "cpu/req (µs)", "req/s vs " order[1], "cpu/req vs " order[1]
        base_rate = median(rate[order[1]]); base_cpu = median(cpu[order[1]])
        for (i = 1; i <= count; i++) {
            t = order[i]; r = median(rate[t]); c = median(cpu[t])
            printf "%-10s %12.0f %14.2f %16.3f %18.3f\n", t, r, c, r / base_rate, c / base_cpu
        }
    }' "$OUT/http.tsv" | tee "$OUT/http-summary.txt"

# --- 2. echo at 64 B: native against wasm ---------------------------------------------
LOADGEN_ARGS=(--connections "$CONNECTIONS" --duration "$DURATION" --rounds "$ROUNDS" --size 64)
echo
echo "== echo: sandport-loadgen echo --target native=... --target wasm=... ${LOADGEN_ARGS[*]}"
"$LOADGEN" echo --target "native=127.0.0.1:$NATIVE_PORT" --target "wasm=127.0.0.1:$ECHO_PORT" \
    "${LOADGEN_ARGS[@]}" 2>"$OUT/echo-rounds.txt" | tee "$OUT/echo-summary.txt"

# --- 3. the burn fixture: 0 µs against $BURN_US µs per message -------------------------
echo
echo "== burn: sandport-loadgen echo --target burn-0=... --target burn-$BURN_US=... ${LOADGEN_ARGS[*]}"
"$LOADGEN" echo --target "burn-0=127.0.0.1:$BURN0_PORT" --target "burn-$BURN_US=127.0.0.1:$BURN_PORT" \
    "${LOADGEN_ARGS[@]}" 2>"$OUT/burn-rounds.txt" | tee "$OUT/burn-summary.txt"
grep -h "burn:" "$OUT/sandport.log" | sed 's/^/sandport log: /' || true
