#!/usr/bin/env bash
# TLS at the edge beside nginx (BENCHMARKS.md, "TLS at the edge (issue 17) beside
# nginx"), reproducible. One ECDSA P-256 certificate (openssl, as ../shared/peers.md
# makes it) for every server; sandport and nginx with the same number of workers (each
# of $WORKERS); alternating targets round by round, medians of $ROUNDS rounds, and the
# server's CPU time (utime+stime from /proc/PID/stat) per request beside every rate:
#
#   https       wrk, $WRK_CONNECTIONS kept connections, against http-hello over TLS and
#               nginx `ssl` (the same body);
#   handshakes  a TLS connection per request (one GET, its response, close_notify,
#               close) through the loadgen: TLS 1.3 full handshakes, and TLS 1.2
#               resumed ones (tickets), against http-hello over TLS and nginx;
#   echo        16 KiB echo over TLS against the same echo in plaintext (one sandport);
#   idle        $IDLE idle connections, plaintext and TLS, each held silent (connected,
#               TLS handshake done, no byte sent) and after one echo: the growth of a
#               fresh sandport's RSS per connection (one sandport per target, round
#               and exchange, since freed memory stays with the allocator); with
#               BASELINE, the same for that binary in the same rounds;
#   sni         TLS 1.3 full handshakes against a listener with $NAMES server names
#               (the client takes them in turn) and one with a single name;
#   passthrough sandport `passthrough = true` with the tcp-proxy against nginx
#               `ssl_preread` + `proxy_pass`, both to one upstream nginx (1 worker) that
#               ends TLS: a handshake per request, and kept connections.
#
# The machine is shared: the load average is printed before every section; compare
# ratios from one run, not absolute figures across runs. Installs nginx-light,
# libnginx-mod-stream, wrk and openssl from Debian if they are missing, raises the
# open-file limit to its hard limit (the idle section needs $IDLE sockets on each side).
#
# Settings (environment): ROUNDS (3), DURATION (5, seconds per round), WORKERS ("1 2"),
# CONNECTIONS (50, the loadgen's handshake and passthrough runs), WRK_CONNECTIONS (50),
# ECHO_CONNECTIONS (16), IDLE (10000), HOLD (2, seconds the idle connections are held
# before the memory is read), NAMES (10000), SECTIONS (default "https handshakes echo
# idle sni passthrough"), PORT_BASE (19000), OUT (/tmp/sandport-tls-bench: configs,
# certificate, logs, raw output), IDLE_EXCHANGES (default "silent echo": which idle
# connections to hold), and BASELINE, the `sandport` binary of another build (say the
# commit before a change): the idle section then holds connections to it too, as
# base-plain and base-tls, with the same configs and plugins.
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD

ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-5}
WORKERS=${WORKERS:-1 2}
CONNECTIONS=${CONNECTIONS:-50}
WRK_CONNECTIONS=${WRK_CONNECTIONS:-50}
ECHO_CONNECTIONS=${ECHO_CONNECTIONS:-16}
IDLE=${IDLE:-10000}
HOLD=${HOLD:-2}
NAMES=${NAMES:-10000}
SECTIONS=${SECTIONS:-https handshakes echo idle sni passthrough}
IDLE_EXCHANGES=${IDLE_EXCHANGES:-silent echo}
PORT_BASE=${PORT_BASE:-19000}
OUT=${OUT:-/tmp/sandport-tls-bench}
read -ra WORKERS_LIST <<<"$WORKERS"

# Whether section $1 is to run.
wanted() {
    [[ " $SECTIONS " == *" $1 "* ]]
}

# Ports. sandport with N workers: PORT_BASE + 100 * N plus these offsets.
HELLO=0       # http-hello over TLS, the only listener of its port (any server name)
ECHO_TLS=1    # echo over TLS
ECHO_PLAIN=2  # the same echo in plaintext
SNI_ONE=3     # http-hello over TLS, server-names = ["hello.localhost"]
SNI_MANY=4    # http-hello over TLS, $NAMES server names t0.bench.localhost, ...
PASS=5        # passthrough: the tcp-proxy to the upstream
nginx_https() { echo $((PORT_BASE + 50 + $1)); }
nginx_proxy() { echo $((PORT_BASE + 60 + $1)); }
UPSTREAM=$((PORT_BASE + 70))
IDLE_PLAIN=$((PORT_BASE + 80))
IDLE_TLS=$((PORT_BASE + 81))
IDLE_BASE_PLAIN=$((PORT_BASE + 82))
IDLE_BASE_TLS=$((PORT_BASE + 83))
sandport_port() { echo $((PORT_BASE + 100 * $1 + $2)); }

if ! command -v wrk >/dev/null || ! command -v nginx >/dev/null || ! command -v openssl >/dev/null ||
    [[ ! -e /usr/lib/nginx/modules/ngx_stream_module.so ]]; then
    apt-get update -qq && apt-get install -y -qq nginx-light libnginx-mod-stream wrk openssl
fi
ulimit -n "$(ulimit -Hn)"
if (($(ulimit -n) < IDLE + 1000)); then
    echo "the open-file limit ($(ulimit -n)) is too low for IDLE=$IDLE connections" >&2
    exit 1
fi

cargo build --release -p sandport --bin sandport -p sandport-loadgen --bin sandport-loadgen
cargo build --profile plugin --target wasm32-wasip2 -p echo -p http-hello -p tcp-proxy
# Where cargo put them: CARGO_TARGET_DIR if set.
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
WASM=$TARGET/wasm32-wasip2/plugin
SANDPORT=$TARGET/release/sandport
LOADGEN=$TARGET/release/sandport-loadgen

rm -rf "$OUT" && mkdir -p "$OUT"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 30 -subj /CN=hello.localhost \
    -addext subjectAltName=DNS:hello.localhost -keyout "$OUT/key.pem" -out "$OUT/cert.pem" 2>/dev/null
TLS_TABLE="[listener.tls]
certificate = \"$OUT/cert.pem\"
key = \"$OUT/key.pem\""

# A listener of http-hello, the echo or the tcp-proxy: name port plugin [extra lines].
listener() {
    cat <<EOF

[[listener]]
name = "$1"
address = "127.0.0.1:$2"
plugin = "$WASM/$3.wasm"
instance = "per-worker"
${4:-}
EOF
}

# --- sandport: one per WORKERS entry --------------------------------------------------
names_list=$(seq 0 $((NAMES - 1)) | sed 's/.*/"t&.bench.localhost"/' | paste -sd, -)
for workers in "${WORKERS_LIST[@]}"; do
    port() { sandport_port "$workers" "$1"; }
    {
        echo "workers = $workers"
        listener hello-tls "$(port $HELLO)" http_hello "$TLS_TABLE"
        listener echo-tls "$(port $ECHO_TLS)" echo "$TLS_TABLE"
        listener echo "$(port $ECHO_PLAIN)" echo
        listener sni-one "$(port $SNI_ONE)" http_hello "server-names = [\"hello.localhost\"]
$TLS_TABLE"
        listener sni-many "$(port $SNI_MANY)" http_hello "server-names = [$names_list]
$TLS_TABLE"
        listener passthrough "$(port $PASS)" tcp_proxy "allow-connect = [\"127.0.0.1:$UPSTREAM\"]
[listener.config]
upstream = \"127.0.0.1:$UPSTREAM\"
[listener.tls]
passthrough = true"
    } >"$OUT/sandport-w$workers.toml"
done
# The idle servers: one listener each, room for every connection, no idle timeout
# while they are held. Each is a target of the idle section: name, port, binary
# (BASELINE's first, so that they are the ones the loadgen measures first).
IDLE_SERVERS=("plain $IDLE_PLAIN $SANDPORT" "tls $IDLE_TLS $SANDPORT")
if [[ -n ${BASELINE:-} ]]; then
    BASELINE=$(realpath "$BASELINE")
    IDLE_SERVERS=("base-plain $IDLE_BASE_PLAIN $BASELINE" "base-tls $IDLE_BASE_TLS $BASELINE" "${IDLE_SERVERS[@]}")
fi
for server in "${IDLE_SERVERS[@]}"; do
    read -r name port _ <<<"$server"
    if [[ $name == *tls ]]; then tls=$TLS_TABLE; else tls=; fi
    for workers in "${WORKERS_LIST[@]}"; do
        {
            echo "workers = $workers"
            listener "idle-$name" "$port" echo "[listener.limits]
max-connections = $((IDLE + 100))
idle-timeout-ms = 600000
$tls"
        } >"$OUT/idle-$name-w$workers.toml"
    done
done

# --- nginx, as in ../shared/peers.md -----------------------------------------------------
# nginx_config NAME WORKERS BODY: a config in $OUT/NAME/nginx.conf.
nginx_config() {
    mkdir -p "$OUT/$1"
    cat >"$OUT/$1/nginx.conf" <<EOF
load_module /usr/lib/nginx/modules/ngx_stream_module.so;
worker_processes $2;
daemon off;
pid $OUT/$1/nginx.pid;
error_log $OUT/$1/error.log;
events { worker_connections 4096; }
$3
EOF
}
# https_server PORT SESSION-CACHE-NAME: the http block of an nginx ending TLS.
https_server() {
    cat <<EOF
http {
  access_log off;
  keepalive_requests 10000000;
  ssl_protocols TLSv1.2 TLSv1.3;             # nginx 1.22 leaves TLS 1.3 out by default
  ssl_session_cache shared:$2:10m;
  server {
    listen 127.0.0.1:$1 ssl reuseport;
    ssl_certificate $OUT/cert.pem; ssl_certificate_key $OUT/key.pem;
    location / { default_type text/plain; return 200 "hello from sandport\n"; }
  }
}
EOF
}
for workers in "${WORKERS_LIST[@]}"; do
    nginx_config "nginx-$workers" "$workers" "$(https_server "$(nginx_https "$workers")" "S$workers")"
    nginx_config "nginx-proxy-$workers" "$workers" "stream {
  map \$ssl_preread_server_name \$up { default 127.0.0.1:$UPSTREAM; }
  server { listen 127.0.0.1:$(nginx_proxy "$workers") reuseport; ssl_preread on; proxy_pass \$up; }
}"
done
nginx_config upstream 1 "$(https_server "$UPSTREAM" U)"

# shellcheck source=processes.sh
source "$ROOT/tests/loadgen/processes.sh"

declare -A PID
start() { # NAME COMMAND...: starts a server, logging to $OUT/NAME.log
    local name=$1
    shift
    "$@" 2>"$OUT/$name.log" &
    PID[$name]=$!
    STARTED+=($!)
}
for workers in "${WORKERS_LIST[@]}"; do
    start "sandport-w$workers" "$SANDPORT" serve --config "$OUT/sandport-w$workers.toml"
    start "nginx-$workers" nginx -c "$OUT/nginx-$workers/nginx.conf"
    start "nginx-proxy-$workers" nginx -c "$OUT/nginx-proxy-$workers/nginx.conf"
done
start upstream nginx -c "$OUT/upstream/nginx.conf"
for workers in "${WORKERS_LIST[@]}"; do
    for offset in $HELLO $ECHO_TLS $ECHO_PLAIN $SNI_ONE $SNI_MANY $PASS; do
        wait_for_port "$(sandport_port "$workers" "$offset")" 120
    done
    wait_for_port "$(nginx_https "$workers")" 60
    wait_for_port "$(nginx_proxy "$workers")" 60
done
wait_for_port "$UPSTREAM" 60

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

# Prints a section's heading with the machine's load average now.
section() {
    echo
    echo "== $1 ($(date -u '+%H:%M:%S UTC'), load $(cut -d' ' -f1-3 /proc/loadavg))"
}

echo "== $(date -u '+%Y-%m-%d %H:%M UTC'), $(nproc) CPUs, load $(cut -d' ' -f1-3 /proc/loadavg)"
echo "== sandport $(git rev-parse --short HEAD), $(nginx -v 2>&1), configs in $OUT"

# --- https: wrk against http-hello over TLS and nginx ----------------------------------------
if wanted https; then
    declare -A URL
    TARGETS=()
    for workers in "${WORKERS_LIST[@]}"; do
        URL[sandport-w$workers]="https://127.0.0.1:$(sandport_port "$workers" $HELLO)/"
        URL[nginx-$workers]="https://127.0.0.1:$(nginx_https "$workers")/"
        TARGETS+=("sandport-w$workers" "nginx-$workers")
    done
    WRK=(wrk -t1 "-c$WRK_CONNECTIONS" "-d${DURATION}s")
    section "HTTPS keep-alive: ${WRK[*]} URL, $ROUNDS rounds, alternating"
    for target in "${TARGETS[@]}"; do
        # Warm-up, unmeasured: handshakes done, memory touched.
        wrk -t1 "-c$WRK_CONNECTIONS" -d1s "${URL[$target]}" >/dev/null
    done
    : >"$OUT/https.tsv"
    for round in $(seq "$ROUNDS"); do
        # Each round starts one target later than the last.
        first=$(((round - 1) % ${#TARGETS[@]}))
        for target in "${TARGETS[@]:first}" "${TARGETS[@]:0:first}"; do
            read -ra pids <<<"$(server_pids "${PID[$target]}")"
            before=$(cpu_ticks "${pids[@]}")
            "${WRK[@]}" "${URL[$target]}" >"$OUT/wrk-$target-$round.txt"
            after=$(cpu_ticks "${pids[@]}")
            requests=$(awk '/requests in/ { print $1 }' "$OUT/wrk-$target-$round.txt")
            rate=$(awk '/^Requests\/sec/ { print $2 }' "$OUT/wrk-$target-$round.txt")
            errors=$(awk '/Socket errors|Non-2xx/ { print }' "$OUT/wrk-$target-$round.txt")
            cpu_us=$(awk -v t=$((after - before)) -v hz="$CLK_TCK" -v n="$requests" 'BEGIN { printf "%.2f", t / hz * 1e6 / n }')
            printf '%s\t%s\t%s\t%s\n' "$target" "$round" "$rate" "$cpu_us" >>"$OUT/https.tsv"
            printf 'round %s %-12s %10.0f req/s  %6s µs server CPU per request%s\n' \
                "$round" "$target" "$rate" "$cpu_us" "${errors:+  $errors}"
        done
    done
    echo
    # Medians per target; each sandport-wN against nginx-N: the ratio of the medians,
    # and the median of the ratios of the rounds (the machine drifts between rounds).
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
            printf "%-12s %10s %13s %14s %14s %20s\n", "target", "req/s", "cpu/req (µs)", "req/s vs nginx", "cpu vs nginx", "req/s vs nginx, by round"
            for (i = 1; i <= count; i++) {
                t = order[i]; peer = t; sub(/^sandport-w/, "nginx-", peer)
                r = median(rate[t]); c = median(cpu[t]); paired = ""
                for (round in rounds) paired = paired " " in_round[t, round] / in_round[peer, round]
                printf "%-12s %10.0f %13.2f %14.3f %14.3f %20.3f\n", t, r, c, r / median(rate[peer]), c / median(cpu[peer]), median(paired)
            }
        }' "$OUT/https.tsv" | tee "$OUT/https-summary.txt"
fi

# loadgen TITLE FILE ARGS...: a loadgen run, its rounds in $OUT/FILE-rounds.txt and its
# table on stdout and in $OUT/FILE.txt.
loadgen() {
    local title=$1 file=$2
    shift 2
    section "$title: sandport-loadgen $*"
    "$LOADGEN" "$@" 2>"$OUT/$file-rounds.txt" | tee "$OUT/$file.txt"
}
LOAD=(--duration "$DURATION" --rounds "$ROUNDS")

# --- handshakes: a TLS connection per request, nginx first -----------------------------------
if wanted handshakes; then
    for workers in "${WORKERS_LIST[@]}"; do
        targets=(--target "nginx-$workers=tls://127.0.0.1:$(nginx_https "$workers")"
            --target "sandport-w$workers=tls://127.0.0.1:$(sandport_port "$workers" $HELLO)")
        loadgen "TLS 1.3 full handshakes, $workers worker(s)" "full-w$workers" http --reconnect --tls-version 1.3 \
            --connections "$CONNECTIONS" "${LOAD[@]}" "${targets[@]}"
        loadgen "TLS 1.2 resumed handshakes, $workers worker(s)" "resumed-w$workers" http --reconnect --resume \
            --tls-version 1.2 --connections "$CONNECTIONS" "${LOAD[@]}" "${targets[@]}"
    done
fi

# --- echo: 16 KiB over TLS against plaintext, the plaintext first ---------------------------
if wanted echo; then
    for workers in "${WORKERS_LIST[@]}"; do
        loadgen "16 KiB echo, TLS against plaintext, $workers worker(s)" "echo-w$workers" echo --size 16384 \
            --connections "$ECHO_CONNECTIONS" "${LOAD[@]}" \
            --target "plain-w$workers=127.0.0.1:$(sandport_port "$workers" $ECHO_PLAIN)" \
            --target "tls-w$workers=tls://127.0.0.1:$(sandport_port "$workers" $ECHO_TLS)"
    done
fi

# --- idle: fresh sandports for every round and exchange ----------------------------------------
if wanted idle; then
    for workers in "${WORKERS_LIST[@]}"; do
        for exchange in $IDLE_EXCHANGES; do
            if [[ $exchange == silent ]]; then hold=(--hold --silent); else hold=(--hold); fi
            targets=()
            for server in "${IDLE_SERVERS[@]}"; do
                read -r name port _ <<<"$server"
                if [[ $name == *tls ]]; then scheme=tls://; else scheme=; fi
                targets+=(--target "$name=${scheme}127.0.0.1:$port")
            done
            section "$IDLE idle connections ($exchange), $workers worker(s): sandport-loadgen echo ${hold[*]} --connections $IDLE --duration $HOLD --rounds 1 ${targets[*]}"
            for round in $(seq "$ROUNDS"); do
                for server in "${IDLE_SERVERS[@]}"; do
                    read -r name port binary <<<"$server"
                    start "idle-$name-w$workers-$exchange-$round" "$binary" serve --config "$OUT/idle-$name-w$workers.toml"
                done
                for server in "${IDLE_SERVERS[@]}"; do
                    read -r _ port _ <<<"$server"
                    wait_for_port "$port" 60
                done
                file=$OUT/idle-w$workers-$exchange-$round
                "$LOADGEN" echo "${hold[@]}" --connections "$IDLE" --duration "$HOLD" --rounds 1 --json "${targets[@]}" \
                    >"$file.json" 2>"$file.txt"
                grep -v '^round' "$file.txt"
                for server in "${IDLE_SERVERS[@]}"; do
                    read -r name _ _ <<<"$server"
                    kill "${PID[idle-$name-w$workers-$exchange-$round]}"
                    wait "${PID[idle-$name-w$workers-$exchange-$round]}" 2>/dev/null || true
                done
            done
            # The medians over the rounds: per connection, and each TLS target above the
            # plaintext one of the same binary.
            jq -rs --arg exchange "$exchange" '
                def median: sort | if length % 2 == 1 then .[length / 2 | floor] else (.[length / 2 - 1] + .[length / 2]) / 2 end;
                def kib: . / 1024 * 10 | round / 10 | tostring + " KiB";
                length as $rounds | ([.[].targets[].errors] | add) as $errors
                | [.[] | [.targets[] | {key: .name, value: .per_connection}] | from_entries] as $by_round
                | ($by_round[0] | keys_unsorted) as $names
                | [$names[] as $n | "\($n) \([$by_round[][$n]] | median | kib)"] as $each
                | [$names[] | select(endswith("tls")) as $t | ($t | sub("tls$"; "plain")) as $p
                    | "\($t) above \($p) \([$by_round[] | .[$t] - .[$p]] | median | kib)"] as $above
                | "\($exchange), median of \($rounds) rounds, per connection: \($each | join(", ")); \($above | join(", ")); \($errors) errors"
            ' "$OUT"/idle-w"$workers"-"$exchange"-*.json | tee "$OUT/idle-w$workers-$exchange-summary.txt"
        done
    done
fi

# --- sni: one name against $NAMES, the one name first ------------------------------------------
if wanted sni; then
    for workers in "${WORKERS_LIST[@]}"; do
        loadgen "SNI routing, 1 name against $NAMES, TLS 1.3 full handshakes, $workers worker(s)" "sni-w$workers" \
            http --reconnect --tls-version 1.3 --connections "$CONNECTIONS" "${LOAD[@]}" \
            --target "one-w$workers=tls://127.0.0.1:$(sandport_port "$workers" $SNI_ONE)" \
            --server-name "one-w$workers=hello.localhost" \
            --target "many-w$workers=tls://127.0.0.1:$(sandport_port "$workers" $SNI_MANY)" \
            --server-name "many-w$workers=t{0..$((NAMES - 1))}.bench.localhost"
    done
fi

# --- passthrough: nginx ssl_preread first --------------------------------------------------
if wanted passthrough; then
    for workers in "${WORKERS_LIST[@]}"; do
        targets=(--target "nginx-proxy-$workers=tls://127.0.0.1:$(nginx_proxy "$workers")"
            --server-name "nginx-proxy-$workers=hello.localhost"
            --target "sandport-w$workers=tls://127.0.0.1:$(sandport_port "$workers" $PASS)"
            --server-name "sandport-w$workers=hello.localhost")
        loadgen "passthrough, a TLS 1.3 full handshake per request, $workers worker(s)" "pass-full-w$workers" \
            http --reconnect --tls-version 1.3 --connections "$CONNECTIONS" "${LOAD[@]}" "${targets[@]}"
        loadgen "passthrough, kept connections, $workers worker(s)" "pass-kept-w$workers" \
            http --connections "$CONNECTIONS" "${LOAD[@]}" "${targets[@]}"
    done
fi
section "done"
