#!/usr/bin/env bash
# Drives examples/http_hello (release build) with wrk, and the same server
# written on tokio (scripts/tokio-hello) for comparison, and prints
# requests/s and errors for each.
#
#   scripts/wrk.sh                      # 100 connections, 10 s each
#   CONNS="100 400" DURATION=10s scripts/wrk.sh
#   SKIP_TOKIO=1 scripts/wrk.sh         # ringloop only (no tokio build)
#
# Needs wrk (Debian/Ubuntu: apt-get install -y wrk). This is a benchmark: it
# keeps the CPU busy for the whole run, and wrk competes with the server for
# the same cores, so compare numbers from one machine and one run only.
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=${DURATION:-10s}
CONNS=${CONNS:-100}
WRK_THREADS=${WRK_THREADS:-2}

if ! command -v wrk >/dev/null; then
    echo "wrk is not installed; on Debian or Ubuntu: apt-get install -y wrk" >&2
    exit 1
fi

tmp=$(mktemp -d)
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    rm -rf "$tmp"
}
trap cleanup EXIT

# start NAME CMD...: starts a server on a free port, prints its address.
start() {
    local name=$1
    shift
    "$@" 127.0.0.1:0 >"$tmp/$name.out" 2>"$tmp/$name.err" &
    pids+=($!)
    for _ in $(seq 300); do
        if grep -q '^listening on ' "$tmp/$name.out" 2>/dev/null; then
            sed -n 's/^listening on //p' "$tmp/$name.out" | head -n1
            return
        fi
        sleep 0.1
    done
    echo "$name did not start:" >&2
    cat "$tmp/$name.err" >&2
    exit 1
}

# bench NAME ADDR: runs wrk for every connection count, prints one line each.
bench() {
    local name=$1 addr=$2 c out rps errs non2xx
    for c in $CONNS; do
        out=$(wrk -t"$WRK_THREADS" -c"$c" -d"$DURATION" "http://$addr/")
        echo "$out" >"$tmp/$name-$c.wrk"
        rps=$(echo "$out" | awk '/^Requests\/sec:/ {print $2}')
        errs=$(echo "$out" | awk '/Socket errors:/ {gsub(",", ""); print $4+$6+$8+$10}')
        non2xx=$(echo "$out" | awk '/Non-2xx/ {print $NF}')
        printf '%-22s -c%-4s %12s req/s   socket errors: %s   non-2xx: %s\n' \
            "$name" "$c" "$rps" "${errs:-0}" "${non2xx:-0}"
    done
}

echo "building examples/http_hello (release)..." >&2
cargo build --release --quiet --example http_hello
addr=$(start ringloop target/release/examples/http_hello)

tokio_addr=
if [ -z "${SKIP_TOKIO:-}" ]; then
    echo "building scripts/tokio-hello (release; the first build downloads tokio)..." >&2
    if cargo build --release --quiet --manifest-path scripts/tokio-hello/Cargo.toml; then
        tokio_addr=$(start tokio scripts/tokio-hello/target/release/tokio-hello)
    else
        echo "tokio-hello did not build; comparing nothing" >&2
    fi
fi

echo "wrk -t$WRK_THREADS -d$DURATION on $(nproc) cores, kernel $(uname -r)"
bench "ringloop http_hello" "$addr"
if [ -n "$tokio_addr" ]; then
    bench "tokio current_thread" "$tokio_addr"
fi
