#!/usr/bin/env bash
# Runs every pipe_bench variant at both sizes and prints ratios against epoll
# and tokio. The machine is shared and noisy, so each variant runs REPS times,
# interleaved with the others, and the median events/s of those runs counts.
#
#   scripts/pipe_bench.sh            # REPS=7 ROUNDS=100
#   REPS=3 ROUNDS=50 scripts/pipe_bench.sh
#
# Every raw result line goes to stdout (and to $OUT if set), followed by a
# summary line per variant and size ("summary ... ratio_vs_epoll=...").
set -euo pipefail
cd "$(dirname "$0")/.."
REPS=${REPS:-7}
ROUNDS=${ROUNDS:-100}
VARIANTS=${VARIANTS:-"epoll ringloop tokio ringloop-async"}
cargo build --release --example pipe_bench -q
BIN=target/release/examples/pipe_bench
OUT=${OUT:-/dev/null}
SIZES=("-n 100 -a 1 -w 100" "-n 8000 -a 100 -w 8000")
tmp=$(mktemp)
trap 'rm -f "$tmp"' EXIT
for size in "${SIZES[@]}"; do
  for ((i = 0; i < REPS; i++)); do
    for v in $VARIANTS; do
      if line=$(timeout 300 "$BIN" "$v" $size -r "$ROUNDS" 2>>"$tmp.err"); then
        echo "$line" | tee -a "$OUT" >>"$tmp"
        echo "$line"
      else
        echo "$v $size: failed: $(tail -1 "$tmp.err")" >&2
      fi
    done
  done
done
# Median events/s per (variant, pipes), then ratios.
awk '
  { v = $1; split($2, a, "="); n = a[2]; split($NF, b, "="); key = v " " n; vals[key] = vals[key] " " b[2]; vs[v] = 1; ns[n] = 1 }
  function median(s,   arr, k, i, j, t) {
    k = split(s, arr, " ")
    for (i = 1; i <= k; i++) for (j = i + 1; j <= k; j++) if (arr[j] + 0 < arr[i] + 0) { t = arr[i]; arr[i] = arr[j]; arr[j] = t }
    return arr[int((k + 1) / 2)]
  }
  END {
    for (n in ns) {
      e = median(vals["epoll " n]); t = median(vals["tokio " n])
      for (v in vs) {
        if (!((v " " n) in vals)) continue
        m = median(vals[v " " n])
        printf "summary %s pipes=%s median_events_per_s=%.0f ratio_vs_epoll=%.2f ratio_vs_tokio=%.2f\n", v, n, m, (e > 0 ? m / e : 0), (t > 0 ? m / t : 0)
      }
    }
  }' "$tmp" | sort -k3,3 -k2,2 | tee -a "$OUT"
rm -f "$tmp.err"
