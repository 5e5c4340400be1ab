#!/usr/bin/env bash
# Runs every benchmark and writes docs/bench.txt (raw output, with the
# machine and commit on top) and docs/bench.svg (scripts/chart.py).
#
#   scripts/bench_all.sh              # what README.md's "Benchmarks" reports
#   REPS=3 ROUNDS=50 scripts/bench_all.sh
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p docs
OUT=docs/bench.txt
cargo build --release --examples -q
{
  echo "# $(date -u +%Y-%m-%dT%H:%MZ) commit $(git rev-parse --short HEAD)"
  echo "# kernel $(uname -r), $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//')"
  echo "# rustc $(rustc --version | cut -d' ' -f2), load before: $(cut -d' ' -f1-3 /proc/loadavg)"
} >"$OUT"
OUT=$OUT scripts/pipe_bench.sh >/dev/null
for b in bench_echo bench_timers bench_wake; do
  timeout 600 "target/release/examples/$b" | tee -a "$OUT"
done
if command -v valgrind >/dev/null; then
  scripts/instructions.sh | tee -a "$OUT"
  SIZE=large scripts/instructions.sh | tee -a "$OUT"
else
  echo "# instructions: skipped, valgrind is not installed" | tee -a "$OUT"
fi
python3 scripts/chart.py "$OUT" docs/bench.svg
