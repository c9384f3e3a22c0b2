#!/usr/bin/env bash
# The kv plugin beside redis-server (BENCHMARKS.md, "The kv plugin beside
# redis-server"; issue 20, point 3), reproducible: Debian's redis-server (one thread, no
# persistence) and sandport (`workers = 1`, one kv listener, default limits), both
# driven by redis-benchmark in the same run.
#
# For each pipeline depth in PIPELINES, each test runs once against each server per
# round, the two back to back and the order flipped every round: PING (inline and
# multibulk), SET, GET and INCR through `-t`, and MGET of the ten keys key:1 ... key:10
# (loaded first) as a custom command, since redis-benchmark has no MGET test. Each run
# records its requests/s (`--csv`) and its server's CPU time per request: utime+stime of
# the server process (/proc/PID/stat, all its threads, in clock ticks of 10 ms) over
# the run, divided by the requests; REQUESTS is large enough that a tick is a few per
# cent of it. The table gives medians of ROUNDS rounds and kv/redis ratios, each the
# median of the rounds' own ratios (the machine drifts between rounds by more than the
# servers differ within one).
#
# BASELINE_WASM, a kv.wasm from another build (say the commit before a change to the
# plugin), adds a third target, kv-baseline: a second sandport like the first serving
# it, so that a change is measured against the plugin before it in the same run.
#
# Settings (environment): ROUNDS (3), PIPELINES ("1 16"), CONNECTIONS (50), REQUESTS
# (200000 per run at -P 1; at deeper pipelines that times PIPELINE_SCALE), PIPELINE_SCALE
# (5), PORT_BASE (18800: kv, +1 redis, +2 kv-baseline), BASELINE_WASM (unset), OUT
# (/tmp/sandport-kv-bench: configs, logs, raw CSV). Installs redis-server and
# redis-tools from Debian if they are missing.
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD
ROUNDS=${ROUNDS:-3}
PIPELINES=${PIPELINES:-1 16}
CONNECTIONS=${CONNECTIONS:-50}
REQUESTS=${REQUESTS:-200000}
PIPELINE_SCALE=${PIPELINE_SCALE:-5}
PORT_BASE=${PORT_BASE:-18800}
OUT=${OUT:-/tmp/sandport-kv-bench}
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}

if ! command -v redis-server >/dev/null || ! command -v redis-benchmark >/dev/null; then
    apt-get update -qq && apt-get install -y -qq redis-server redis-tools
fi
cargo build --release -p sandport --bin sandport
cargo build --profile plugin --target wasm32-wasip2 -p kv
rm -rf "$OUT" && mkdir -p "$OUT"

declare -A PORT=([kv]=$PORT_BASE [redis]=$((PORT_BASE + 1)) [kv-baseline]=$((PORT_BASE + 2)))
declare -A WASM=([kv]=$TARGET/wasm32-wasip2/plugin/kv.wasm)
TARGETS=(kv redis)
if [[ -n ${BASELINE_WASM:-} ]]; then
    # A copy: the build may overwrite the file it points at while this runs.
    cp "$BASELINE_WASM" "$OUT/kv-baseline.wasm"
    WASM[kv-baseline]=$OUT/kv-baseline.wasm
    TARGETS+=(kv-baseline)
fi

# shellcheck source=processes.sh
source "$ROOT/tests/loadgen/processes.sh"

declare -A PID
for name in "${!WASM[@]}"; do
    cat >"$OUT/$name.toml" <<TOML
workers = 1
cache-dir = "$OUT/cache-$name"
[[listener]]
name = "kv"
address = "127.0.0.1:${PORT[$name]}"
plugin = "${WASM[$name]}"
TOML
    "$TARGET/release/sandport" serve --config "$OUT/$name.toml" 2>"$OUT/$name.log" &
    PID[$name]=$!
    STARTED+=($!)
done
redis-server --port "${PORT[redis]}" --bind 127.0.0.1 --save '' --appendonly no --io-threads 1 \
    --dir "$OUT" --logfile "$OUT/redis.log" &
PID[redis]=$!
STARTED+=($!)
for name in "${TARGETS[@]}"; do
    wait_for_port "${PORT[$name]}" 60
done

MGET=(MGET)
for i in $(seq 10); do
    MGET+=("key:$i")
done
for name in "${TARGETS[@]}"; do
    for i in $(seq 10); do
        redis-cli -p "${PORT[$name]}" set "key:$i" "value-$i" >/dev/null
    done
done

# utime + stime of process $1 (all its threads), in clock ticks.
cpu_ticks() {
    local fields
    # Field 2, the command, is in parentheses and may hold spaces: count after it.
    read -ra fields <<<"$(cut -d')' -f2- "/proc/$1/stat")"
    echo $((fields[11] + fields[12]))
}
CLK_TCK=$(getconf CLK_TCK)

# One redis-benchmark run of test $1 against $2 at pipeline $3, in round $4: a line of
# results.tsv per CSV row (target, pipeline, round, test, requests/s, CPU µs/request).
run() { # test target pipeline round
    local test=$1 name=$2 pipeline=$3 round=$4
    local requests=$REQUESTS
    ((pipeline > 1)) && requests=$((REQUESTS * PIPELINE_SCALE))
    local command=(-t "$test")
    [[ $test == mget ]] && command=("${MGET[@]}")
    local csv=$OUT/$name-$test-P$pipeline-$round.csv
    local before after
    before=$(cpu_ticks "${PID[$name]}")
    redis-benchmark -p "${PORT[$name]}" -c "$CONNECTIONS" -n "$requests" -P "$pipeline" --csv "${command[@]}" \
        >"$csv" 2>"$OUT/$name-$test-P$pipeline-$round.err"
    after=$(cpu_ticks "${PID[$name]}")
    if grep -qi error "$OUT/$name-$test-P$pipeline-$round.err" "$csv"; then
        echo "redis-benchmark saw an error: $name $test -P $pipeline round $round (see $csv)" >&2
        exit 1
    fi
    # PING runs twice under `-t ping` (inline and multibulk): the CPU is shared by
    # the rows, in proportion to the time each took at its rate.
    tail -n +2 "$csv" | tr -d '"' | awk -F, -v OFS='\t' -v name="$name" -v p="$pipeline" -v r="$round" \
        -v ticks=$((after - before)) -v hz="$CLK_TCK" -v n="$requests" '
        { test[NR] = $1; rate[NR] = $2; seconds += n / $2 }
        END {
            for (i = 1; i <= NR; i++) {
                split(test[i], word, " ")
                print name, p, r, tolower(word[1]), rate[i], ticks / hz * 1e6 * (n / rate[i]) / seconds / n
            }
        }' | tee -a "$OUT/results.tsv" |
        awk -F'\t' '{ printf "round %s  -P %-3s %-12s %-12s %10.0f req/s  %6.3f µs CPU/req\n", $3, $2, $4, $1, $5, $6 }'
}

echo "== $(date -u '+%Y-%m-%d %H:%M UTC'), $(nproc) CPUs, load $(cut -d' ' -f1-3 /proc/loadavg)"
echo "== sandport $(git rev-parse --short HEAD), $(redis-server --version | cut -d' ' -f1-3), configs in $OUT"
echo "== redis-benchmark -c $CONNECTIONS -n $REQUESTS (x$PIPELINE_SCALE pipelined) -P {${PIPELINES// /,}} --csv" \
    "{-t ping|set|get|incr, ${MGET[*]}}, $ROUNDS rounds, targets ${TARGETS[*]}"
for name in "${TARGETS[@]}"; do
    # Warm-up, unmeasured: each server touches its memory and the jit its code.
    redis-benchmark -p "${PORT[$name]}" -c "$CONNECTIONS" -n 100000 -P 16 -q -t set,get >/dev/null 2>&1
done
: >"$OUT/results.tsv"
for round in $(seq "$ROUNDS"); do
    # Each round starts one target later than the last.
    first=$(((round - 1) % ${#TARGETS[@]}))
    order=("${TARGETS[@]:first}" "${TARGETS[@]:0:first}")
    for pipeline in $PIPELINES; do
        for test in ping set get incr mget; do
            for name in "${order[@]}"; do
                run "$test" "$name" "$pipeline" "$round"
            done
        done
    done
done

echo
# Medians per target, test and depth; each ratio is the median of the rounds' ratios.
awk -F'\t' -v targets="${TARGETS[*]}" '
    function median(list,    n, v, i, j, t) {
        n = split(list, v, " ")
        for (i = 1; i <= n; i++) for (j = i + 1; j <= n; j++) if (v[j] + 0 < v[i] + 0) { t = v[i]; v[i] = v[j]; v[j] = t }
        return n % 2 ? v[(n + 1) / 2] : (v[n / 2] + v[n / 2 + 1]) / 2
    }
    {
        key = $4 " -P " $2
        if (!(key in seen)) { seen[key] = 1; order[++count] = key }
        rate[$1, key] = rate[$1, key] " " $5; cpu[$1, key] = cpu[$1, key] " " $6
        in_round_rate[$1, key, $3] = $5; in_round_cpu[$1, key, $3] = $6; rounds[$3] = 1
    }
    END {
        n = split(targets, t, " ")
        printf "| test | kv req/s | redis req/s | kv/redis req/s | kv CPU/req | redis CPU/req | kv/redis CPU/req |"
        for (i = 3; i <= n; i++) printf " %s req/s | kv/%s req/s | kv/%s CPU/req |", t[i], t[i], t[i]
        printf "\n| --- | --- | --- | --- | --- | --- | --- |"
        for (i = 3; i <= n; i++) printf " --- | --- | --- |"
        printf "\n"
        for (k = 1; k <= count; k++) {
            key = order[k]
            printf "| %s | %.0f | %.0f |", key, median(rate["kv", key]), median(rate["redis", key])
            for (i = 2; i <= n; i++) {
                rates = ""; cpus = ""
                for (r in rounds) {
                    rates = rates " " in_round_rate["kv", key, r] / in_round_rate[t[i], key, r]
                    cpus = cpus " " in_round_cpu["kv", key, r] / in_round_cpu[t[i], key, r]
                }
                paired_rate[i] = median(rates); paired_cpu[i] = median(cpus)
            }
            printf " %.2f | %.2f µs | %.2f µs | %.2f |", paired_rate[2], median(cpu["kv", key]), median(cpu["redis", key]), paired_cpu[2]
            for (i = 3; i <= n; i++) printf " %.0f | %.2f | %.2f |", median(rate[t[i], key]), paired_rate[i], paired_cpu[i]
            printf "\n"
        }
    }' "$OUT/results.tsv" | tee "$OUT/summary.md"
