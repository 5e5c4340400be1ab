#!/usr/bin/env bash
# Runs every pipe_bench variant at both sizes and prints ratios against epoll
# and tokio. The machine is shared and noisy, so each variant runs REPS times,
# interleaved with the others, and the median events/s of those runs counts.
#
#   scripts/pipe_bench.sh            # REPS=7 ROUNDS=100 (SMALL_ROUNDS=2000 at 100 pipes)
#   REPS=3 ROUNDS=50 scripts/pipe_bench.sh
#   VARIANTS="epoll ringloop-edge" scripts/pipe_bench.sh
#
# Every raw result line goes to stdout (and to $OUT if set), followed by a
# summary line per variant and size ("summary ... ratio_vs_epoll=...").
set -euo pipefail
cd "$(dirname "$0")/.."
REPS=${REPS:-7}
ROUNDS=${ROUNDS:-100}
# A round at 100 pipes takes ~0.3 ms: run 20x as many there, so that one
# run spans more than a moment of the machine's (shared, drifting) speed.
SMALL_ROUNDS=${SMALL_ROUNDS:-$((ROUNDS * 20))}
VARIANTS=${VARIANTS:-"epoll ringloop uring-raw uring-raw-fixed epoll-edge ringloop-edge uring-raw-edge ringloop-ops tokio ringloop-async ringloop-async-ops ringloop-async-multi"}
cargo build --release --example pipe_bench -q
BIN=target/release/examples/pipe_bench
OUT=${OUT:-/dev/null}
SIZES=("-n 100 -a 1 -w 100 -r $SMALL_ROUNDS" "-n 8000 -a 100 -w 8000 -r $ROUNDS")
tmp=$(mktemp)
trap 'rm -f "$tmp"' EXIT
for size in "${SIZES[@]}"; do
  for ((i = 0; i < REPS; i++)); do
    for v in $VARIANTS; do
      if line=$(timeout 300 "$BIN" "$v" $size 2>>"$tmp.err"); then
        echo "$line" | tee -a "$OUT" >>"$tmp"
        echo "$line"
      else
        echo "$v $size: failed: $(tail -1 "$tmp.err")" >&2
      fi
    done
  done
done
# Per (variant, pipes): the median and the best events/s over the runs, and
# the ratios against epoll and tokio. The machine's speed drifts between runs
# (other tenants), so a ratio is taken within each interleaved repetition
# (variant run i against baseline run i, seconds apart) and the median of
# those paired ratios is reported.
awk '
  {
    v = $1; split($2, a, "="); n = a[2]; split($NF, b, "="); key = v " " n
    cnt[key]++; val[key, cnt[key]] = b[2]; vs[v] = 1; ns[n] = 1
  }
  function median(arr, k,   i, j, t) {
    for (i = 1; i <= k; i++) for (j = i + 1; j <= k; j++) if (arr[j] + 0 < arr[i] + 0) { t = arr[i]; arr[i] = arr[j]; arr[j] = t }
    return arr[int((k + 1) / 2)]
  }
  function stat(key, what,   i, k, arr, best) {
    k = cnt[key]; best = 0
    for (i = 1; i <= k; i++) { arr[i] = val[key, i]; if (val[key, i] + 0 > best) best = val[key, i] + 0 }
    return what == "best" ? best : median(arr, k)
  }
  function paired(key, base,   i, k, arr) {
    if (!(base in cnt)) return 0
    k = cnt[key] < cnt[base] ? cnt[key] : cnt[base]
    for (i = 1; i <= k; i++) arr[i] = val[key, i] / val[base, i]
    return median(arr, k)
  }
  END {
    for (n in ns) for (v in vs) {
      key = v " " n
      if (!(key in cnt)) continue
      printf "summary %s pipes=%s median_events_per_s=%.0f best_events_per_s=%.0f ratio_vs_epoll=%.2f ratio_vs_tokio=%.2f\n", v, n, stat(key, "median"), stat(key, "best"), paired(key, "epoll " n), paired(key, "tokio " n)
    }
  }' "$tmp" | sort -k3,3 -k2,2 | tee -a "$OUT"
rm -f "$tmp.err"
