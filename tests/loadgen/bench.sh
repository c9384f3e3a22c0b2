#!/usr/bin/env bash
# The runs behind BENCHMARKS.md, reproducible: builds what they need, starts sandport
# (echo, http-hello, the burn fixture), the native echo and two nginx (1 and 2
# workers), and measures, in the same run, alternating targets round by round:
#
#   1. HTTP: wrk against sandport's http-hello, nginx with 1 worker and with 2, with
#      each server's CPU time (utime+stime from /proc/PID/stat) per request;
#   2. echo through the loadgen at each of $ECHO_SIZES bytes: native echo and the wasm
#      echo;
#   3. the burn fixture through the loadgen: burn-us = 0 and burn-us = $BURN_US.
#
# Medians of $ROUNDS rounds; ratios are against the first target of each run. The
# machine is shared and noisy: compare ratios from one run, not absolute figures
# across runs. Installs nginx-light and wrk from Debian if they are missing.
#
# Settings (environment): ROUNDS (3), DURATION (5, seconds per round), BURN_US (50),
# ECHO_SIZES (64; "64 16384" for the large echo too),
# CONNECTIONS (16, loadgen), WRK_CONNECTIONS (50), PORT_BASE (18000), OUT
# (/tmp/sandport-bench: configs, logs, raw output), BURN_ITERATIONS (unset: each burn
# instance calibrates BURN_US itself; set, the fixed work per message every burn
# listener does instead, which servers compared with each other need: calibrations
# differ by 20-30% between instances on a busy machine), and for the host after issue 8:
# WORKERS, a list of `workers` settings, one sandport each, all in the same run
# (unset: one sandport without a `workers` line; WORKERS="1 2" for the scaling
# figures), and INSTANCE (unset: the default instance mode of every sandport listener;
# `per-worker` for the scaling figures, so that every worker serves each listener),
# SECTIONS, which of the three to run (default "http echo burn"), and BASELINE, the
# `sandport` binary of another build (say the commit before a change): each WORKERS
# entry then runs on it too, as NAME-baseline, with the same config and plugins, so
# that a change to the host is measured against the host before it in the same run, and
# BASELINE_WASM, the folder of the plugins that build speaks (its own
# target/wasm32-wasip2/plugin, when the contract's version moved since; default: this
# tree's), and BASELINE_NATIVE, the `native_echo` example of that build: the echo
# section then measures it too, as native-baseline (a change to the reactor or the
# buffers moves the native handler as well).
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
SECTIONS=${SECTIONS:-http echo burn}
ECHO_SIZES=${ECHO_SIZES:-64}

# Whether section $1 is to run.
wanted() {
    [[ " $SECTIONS " == *" $1 "* ]]
}

# Each sandport takes a block of ports: PORT_BASE + 200 * its index, plus these.
ECHO_OFFSET=0
BURN0_OFFSET=1
BURN_OFFSET=2
HTTP_OFFSET=80
NGINX1_PORT=$((PORT_BASE + 190))
NGINX2_PORT=$((PORT_BASE + 191))
NATIVE_PORT=$((PORT_BASE + 199))
NATIVE_BASELINE_PORT=$((PORT_BASE + 198))

if ! command -v wrk >/dev/null || ! command -v nginx >/dev/null; then
    apt-get update -qq && apt-get install -y -qq nginx-light wrk
fi

cargo build --release -p sandport --bin sandport --example native_echo -p sandport-loadgen --bin sandport-loadgen
cargo build --profile plugin --target wasm32-wasip2 -p echo -p http-hello -p fixture-burn
# Where cargo put them: CARGO_TARGET_DIR if set.
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
WASM=$TARGET/wasm32-wasip2/plugin
LOADGEN=$TARGET/release/sandport-loadgen

rm -rf "$OUT" && mkdir -p "$OUT"

# --- sandport: one per WORKERS entry ------------------------------------------------
read -ra WORKERS_LIST <<<"${WORKERS:-default}"
INSTANCE_LINE=${INSTANCE:+instance = \"$INSTANCE\"}
SANDPORTS=()
declare -A BASE BINARY WORKERS_OF PLUGINS_OF
for workers in "${WORKERS_LIST[@]}"; do
    if [[ $workers == default ]]; then name=sandport; else name=sandport-w$workers; fi
    SANDPORTS+=("$name")
    BINARY[$name]=$TARGET/release/sandport
    WORKERS_OF[$name]=$workers
    PLUGINS_OF[$name]=$WASM
    if [[ -n ${BASELINE:-} ]]; then
        SANDPORTS+=("$name-baseline")
        BINARY[$name-baseline]=$(realpath "$BASELINE")
        WORKERS_OF[$name-baseline]=$workers
        PLUGINS_OF[$name-baseline]=${BASELINE_WASM:-$WASM}
    fi
done
for i in "${!SANDPORTS[@]}"; do
    name=${SANDPORTS[$i]}
    workers=${WORKERS_OF[$name]}
    BASE[$name]=$((PORT_BASE + 200 * i))
    {
        if [[ $workers != default ]]; then
            echo "workers = $workers"
        fi
        cat <<EOF
[[listener]]
name = "echo"
address = "127.0.0.1:$((BASE[$name] + ECHO_OFFSET))"
plugin = "${PLUGINS_OF[$name]}/echo.wasm"
$INSTANCE_LINE

[[listener]]
name = "http-hello"
address = "127.0.0.1:$((BASE[$name] + HTTP_OFFSET))"
plugin = "${PLUGINS_OF[$name]}/http_hello.wasm"
$INSTANCE_LINE
EOF
        for listener in "burn-0 $BURN0_OFFSET 0" "burn-$BURN_US $BURN_OFFSET $BURN_US"; do
            read -r listener_name offset us <<<"$listener"
            cat <<EOF

[[listener]]
name = "$listener_name"
address = "127.0.0.1:$((BASE[$name] + offset))"
plugin = "${PLUGINS_OF[$name]}/fixture_burn.wasm"
$INSTANCE_LINE

[listener.config]
burn-us = $us
EOF
            if [[ -n ${BURN_ITERATIONS:-} && $us != 0 ]]; then
                echo "burn-iterations = $BURN_ITERATIONS"
            fi
        done
    } >"$OUT/$name.toml"
done

# --- nginx, as in ../shared/peers.md, with 1 and with 2 workers ---------------------
for workers in 1 2; do
    port=$((PORT_BASE + 189 + workers))
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

# shellcheck source=processes.sh
source "$ROOT/tests/loadgen/processes.sh"

declare -A PID
for name in "${SANDPORTS[@]}"; do
    "${BINARY[$name]}" serve --config "$OUT/$name.toml" 2>"$OUT/$name.log" &
    PID[$name]=$!
    STARTED+=($!)
done
"$TARGET/release/examples/native_echo" "127.0.0.1:$NATIVE_PORT" 2>"$OUT/native_echo.log" &
STARTED+=($!)
if [[ -n ${BASELINE_NATIVE:-} ]]; then
    "$BASELINE_NATIVE" "127.0.0.1:$NATIVE_BASELINE_PORT" 2>"$OUT/native_echo-baseline.log" &
    STARTED+=($!)
fi
for workers in 1 2; do
    nginx -c "$OUT/nginx-$workers/nginx.conf" &
    PID[nginx-$workers]=$!
    STARTED+=($!)
done

for name in "${SANDPORTS[@]}"; do
    for offset in $ECHO_OFFSET $BURN0_OFFSET $BURN_OFFSET $HTTP_OFFSET; do
        wait_for_port $((BASE[$name] + offset)) 60
    done
done
for port in $NGINX1_PORT $NGINX2_PORT $NATIVE_PORT ${BASELINE_NATIVE:+$NATIVE_BASELINE_PORT}; do
    wait_for_port "$port" 60
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
echo "== sandport $(git rev-parse --short HEAD), configs in $OUT"

# --- 1. HTTP: wrk, alternating the sandports, nginx 1 worker, nginx 2 workers --------
if wanted http; then
    declare -A HTTP_URL=([nginx-1]="http://127.0.0.1:$NGINX1_PORT/" [nginx-2]="http://127.0.0.1:$NGINX2_PORT/")
    for name in "${SANDPORTS[@]}"; do
        HTTP_URL[$name]="http://127.0.0.1:$((BASE[$name] + HTTP_OFFSET))/"
    done
    HTTP_TARGETS=("${SANDPORTS[@]}" nginx-1 nginx-2)
    WRK=(wrk -t1 "-c$WRK_CONNECTIONS" "-d${DURATION}s")
    echo
    echo "== HTTP: ${WRK[*]} URL, $ROUNDS rounds, alternating"
    for target in "${HTTP_TARGETS[@]}"; do
        # Warm-up, unmeasured: nginx's workers and sandport's instance touch their memory.
        wrk -t1 "-c$WRK_CONNECTIONS" -d1s "${HTTP_URL[$target]}" >/dev/null
    done
    : >"$OUT/http.tsv"
    for round in $(seq "$ROUNDS"); do
        # Each round starts one target later than the last, so that no target always
        # runs right after the same one, or always last while the machine drifts.
        first=$(((round - 1) % ${#HTTP_TARGETS[@]}))
        for target in "${HTTP_TARGETS[@]:first}" "${HTTP_TARGETS[@]:0:first}"; do
            read -ra pids <<<"$(server_pids "${PID[$target]}")"
            before=$(cpu_ticks "${pids[@]}")
            "${WRK[@]}" "${HTTP_URL[$target]}" >"$OUT/wrk-$target-$round.txt"
            after=$(cpu_ticks "${pids[@]}")
            requests=$(awk '/requests in/ { print $1 }' "$OUT/wrk-$target-$round.txt")
            rate=$(awk '/^Requests\/sec/ { print $2 }' "$OUT/wrk-$target-$round.txt")
            errors=$(awk '/Socket errors|Non-2xx/ { print }' "$OUT/wrk-$target-$round.txt")
            cpu_us=$(awk -v t=$((after - before)) -v hz="$CLK_TCK" -v n="$requests" 'BEGIN { printf "%.2f", t / hz * 1e6 / n }')
            printf '%s\t%s\t%s\t%s\n' "$target" "$round" "$rate" "$cpu_us" >>"$OUT/http.tsv"
            printf 'round %s %-21s %10.0f req/s  %6s µs server CPU per request  (pids %s)%s\n' \
                "$round" "$target" "$rate" "$cpu_us" "${pids[*]}" "${errors:+  $errors}"
        done
    done
    echo
    # Medians per target, and ratios to the first target's. The last column pairs each
    # round with nginx-2's run of the same round and takes the median of those ratios:
    # the machine's speed drifts between rounds by more than the servers differ.
    awk -F'\t' '
        function median(list,    n, v, i, j, t) {
            n = split(list, v, " ")
            for (i = 1; i <= n; i++) for (j = i + 1; j <= n; j++) if (v[j] + 0 < v[i] + 0) { t = v[i]; v[i] = v[j]; v[j] = t }
            return n % 2 ? v[(n + 1) / 2] : (v[n / 2] + v[n / 2 + 1]) / 2
        }
        {
            if (!($1 in rate)) order[++count] = $1
            rate[$1] = rate[$1] " " $3; cpu[$1] = cpu[$1] " " $4; in_round[$1, $2] = $3; rounds[$2] = 1
        }
        END {
            printf "%-21s %10s %13s %20s %22s %26s\n", "target", "req/s", "cpu/req (µs)", "req/s vs " order[1], "cpu/req vs " order[1], "req/s vs nginx-2, by round"
            base_rate = median(rate[order[1]]); base_cpu = median(cpu[order[1]])
            for (i = 1; i <= count; i++) {
                t = order[i]; r = median(rate[t]); c = median(cpu[t]); paired = ""
                for (round in rounds) paired = paired " " in_round[t, round] / in_round["nginx-2", round]
                printf "%-21s %10.0f %13.2f %20.3f %22.3f %26.3f\n", t, r, c, r / base_rate, c / base_cpu, median(paired)
            }
        }' "$OUT/http.tsv" | tee "$OUT/http-summary.txt"
fi

# --- 2. echo at each of $ECHO_SIZES bytes: native against wasm ------------------------
LOADGEN_ARGS=(--connections "$CONNECTIONS" --duration "$DURATION" --rounds "$ROUNDS")
ECHO_TARGETS=(--target "native=127.0.0.1:$NATIVE_PORT")
if [[ -n ${BASELINE_NATIVE:-} ]]; then
    ECHO_TARGETS+=(--target "native-baseline=127.0.0.1:$NATIVE_BASELINE_PORT")
fi
BURN_TARGETS=(--target "burn-0=127.0.0.1:$((BASE[${SANDPORTS[0]}] + BURN0_OFFSET))")
for name in "${SANDPORTS[@]}"; do
    suffix=${name#sandport}
    ECHO_TARGETS+=(--target "wasm$suffix=127.0.0.1:$((BASE[$name] + ECHO_OFFSET))")
    BURN_TARGETS+=(--target "burn-$BURN_US$suffix=127.0.0.1:$((BASE[$name] + BURN_OFFSET))")
done
if wanted echo; then
    for size in $ECHO_SIZES; do
        echo
        echo "== echo: sandport-loadgen echo ${ECHO_TARGETS[*]} ${LOADGEN_ARGS[*]} --size $size"
        "$LOADGEN" echo "${ECHO_TARGETS[@]}" "${LOADGEN_ARGS[@]}" --size "$size" 2>"$OUT/echo-$size-rounds.txt" |
            tee "$OUT/echo-$size-summary.txt"
    done
fi

# --- 3. the burn fixture: 0 µs against $BURN_US µs per message -------------------------
if wanted burn; then
    echo
    echo "== burn: sandport-loadgen echo ${BURN_TARGETS[*]} ${LOADGEN_ARGS[*]} --size 64"
    "$LOADGEN" echo "${BURN_TARGETS[@]}" "${LOADGEN_ARGS[@]}" --size 64 2>"$OUT/burn-rounds.txt" | tee "$OUT/burn-summary.txt"
    for name in "${SANDPORTS[@]}"; do
        grep -h "burn:" "$OUT/$name.log" | sed "s/^/$name log: /" || true
    done
fi
