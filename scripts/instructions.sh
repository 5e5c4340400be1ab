#!/usr/bin/env bash
# User-space instructions per event of every pipe_bench variant, counted by
# valgrind's callgrind: a measure that does not move with the machine's load,
# for comparing the loops' own code (the kernel's work is not counted).
#
#   scripts/instructions.sh                 # 100 pipes, 1 active chain, 100 writes
#   VARIANTS="epoll ringloop" scripts/instructions.sh
#   SIZE=large scripts/instructions.sh      # 8000 pipes, 100 active, 8000 writes
#
# Each variant runs twice, with R1 and R2 rounds; the difference of the two
# counts divided by the difference in events is the cost of one more event,
# with set-up and tear-down cancelled out. Prints one line per variant:
#   instructions VARIANT per_event=X vs_epoll=Y vs_tokio=Z
# (`instructions-8000` with SIZE=large).
# Needs valgrind (Debian/Ubuntu: apt-get install -y valgrind).
set -euo pipefail
cd "$(dirname "$0")/.."
command -v valgrind >/dev/null || { echo "valgrind is not installed (apt-get install -y valgrind)" >&2; exit 1; }
VARIANTS=${VARIANTS:-"epoll ringloop uring-raw uring-raw-fixed epoll-edge ringloop-edge uring-raw-edge ringloop-ops tokio ringloop-async ringloop-async-ops ringloop-async-multi"}
case ${SIZE:-small} in
  small) PIPES=100 ACTIVE=1 WRITES=100 R1=${R1:-50} R2=${R2:-150} LABEL=instructions ;;
  # A round is 80 times longer: fewer rounds keep each run to seconds.
  large) PIPES=8000 ACTIVE=100 WRITES=8000 R1=${R1:-2} R2=${R2:-4} LABEL=instructions-8000 ;;
  *) echo "SIZE is small or large" >&2; exit 2 ;;
esac
cargo build --release --example pipe_bench -q
BIN=target/release/examples/pipe_bench

# count VARIANT ROUNDS: instructions of one run, from callgrind's summary.
count() {
  valgrind --tool=callgrind --callgrind-out-file=/dev/null "$BIN" "$1" \
    -n $PIPES -a $ACTIVE -w $WRITES -r "$2" 2>&1 >/dev/null |
    sed -n 's/.*Collected : \([0-9]*\).*/\1/p'
}

declare -A per
for v in $VARIANTS; do
  a=$(count "$v" "$R1")
  b=$(count "$v" "$R2")
  # A round is ACTIVE + WRITES reads (the first byte of each chain, then one per write).
  per[$v]=$(awk -v a="$a" -v b="$b" -v r=$((R2 - R1)) -v e=$((ACTIVE + WRITES)) \
    'BEGIN { printf "%.0f", (b - a) / (r * e) }')
done
for v in $VARIANTS; do
  line="$LABEL $v per_event=${per[$v]}"
  for base in epoll tokio; do
    if [[ -n ${per[$base]:-} ]]; then
      line+=" vs_$base=$(awk -v x="${per[$v]}" -v y="${per[$base]}" 'BEGIN { printf "%.2f", x / y }')"
    fi
  done
  echo "$line"
done
