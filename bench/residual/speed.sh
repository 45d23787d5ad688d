#!/usr/bin/env bash
# Residual flows beside normflows, one interleaved run: `diffeo fit --flow residual` (8 blocks of
# ActNorm + a 128×2 LipSwish block, k = 0.97, roulette with Neumann gradients) and
# bench/residual/normflows_residual.py (the same blocks in normflows) on the peers' data folders,
# the same steps and batch. Writes one JSON line per run to bench/results/residual-TIME.jsonl
# and prints the rows (bench/residual/summary.py). diffeo's log_prob rate is the test set's rows over
# the whole `diffeo eval` command (start, loading, exact log-dets).
#   bench/residual/speed.sh [--data DIR] [--steps N] [--configs "moons"]
set -euo pipefail
cd "$(dirname "$0")/../.."
data="${PEERS_DATA:-$HOME/.cache/diffeo/peers-data}"; steps=300; configs="moons"
while [ $# -gt 0 ]; do
  case "$1" in
    --data) data="$2"; shift 2 ;;
    --steps) steps="$2"; shift 2 ;;
    --configs) configs="$2"; shift 2 ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
done
source bench/common.sh
out=$(mktemp -d)
raw="bench/results/residual-$(date -u +%Y%m%dT%H%M%SZ).jsonl"
trap 'rm -rf "$out"' EXIT
for c in $configs; do
  # The final validation is inside diffeo's timed fit: at most 10,000 rows of it.
  "$py" -c 'import numpy as np, sys; np.save(sys.argv[2], np.load(sys.argv[1])[:10000])' "$data/$c/val.npy" "$out/val.npy"
  s=$(date +%s.%N)
  "$bin" fit --data "$data/$c/train.npy" --val "$out/val.npy" --flow residual --steps "$steps" --batch 512 \
    --eval-every "$steps" --out "$out/m.dfo" > "$out/fit.log" 2>&1
  t=$(tr '\r' '\n' < "$out/fit.log" | grep -o '([0-9]* steps, [0-9.]* s)' | tail -1 | sed 's/.*steps, \([0-9.]*\) s)/\1/')
  s=$(date +%s.%N)
  ll=$("$bin" eval --model "$out/m.dfo" --data "$data/$c/test.npy" --json)
  e=$(printf "%.3f" "$(echo "$(date +%s.%N) - $s" | bc)")
  echo "{\"lib\": \"diffeo\", \"data\": \"$c\", \"steps\": $steps, \"steps_per_s\": $(printf "%.3f" "$(echo "scale=6; $steps / $t" | bc)"), \"eval_s\": $e, \"eval\": $ll}" >> "$raw"
  "$py" bench/residual/normflows_residual.py --data "$data/$c" --steps "$steps" --threads 2 >> "$raw"
done
python3 bench/residual/summary.py "$raw" --section
echo "raw lines: $raw"
