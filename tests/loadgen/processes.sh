# Sourced by the benchmark scripts (bench.sh, lang-bench.sh): what they start is
# stopped when they exit, and they wait for servers to listen. Needs $OUT, where the
# servers' logs go, for the message of a server that never listens.

# PIDs of the processes started; add each with `STARTED+=($!)`.
STARTED=()

stop_all() {
    for pid in "${STARTED[@]}"; do
        kill "$pid" 2>/dev/null || true
    done
    wait 2>/dev/null || true
}
trap stop_all EXIT

# Waits until PORT ($1) on 127.0.0.1 accepts connections, for at most $2 seconds.
wait_for_port() {
    local deadline=$((SECONDS + $2))
    until (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; do
        if ((SECONDS >= deadline)); then
            echo "nothing listens on port $1 after $2 s; logs in $OUT" >&2
            exit 1
        fi
        sleep 0.1
    done
}
