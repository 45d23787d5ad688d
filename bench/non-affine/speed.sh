#!/usr/bin/env bash
# Non-affine autoregressive flows beside their peers, one interleaved run on the peers' data folders:
# `diffeo fit --flow naf` beside zuko's NAF, `--flow umnn` beside zuko's UNAF (both with the same
# MADE: 5 transforms of 128×2, Adam 1e−3), `--flow bnaf` beside FlowJAX's BNAF (1 layer, block
# dim 8, depth 1, Adam 1e−2); the same steps and batch 512. Writes one JSON line per run to
# bench/results/non-affine-speed-TIME.jsonl and prints the rows (bench/non-affine/summary.py).
# diffeo runs with a constant learning rate, as the peers' loops do; its log_prob rate is the rows
# over the whole `diffeo eval` command on the test set tiled to ≥ 100,000 rows.
#   bench/non-affine/speed.sh [--data DIR] [--steps N] [--umnn-steps N] [--configs "moons power"]
#                             [--models "naf umnn bnaf"]
set -euo pipefail
cd "$(dirname "$0")/../.."
data="${PEERS_DATA:-$HOME/.cache/diffeo/peers-data}"; steps=500; umnn_steps=100; configs="moons power"; models="naf umnn bnaf"
while [ $# -gt 0 ]; do
  case "$1" in
    --data) data="$2"; shift 2 ;;
    --steps) steps="$2"; shift 2 ;;
    --umnn-steps) umnn_steps="$2"; shift 2 ;;
    --configs) configs="$2"; shift 2 ;;
    --models) models="$2"; shift 2 ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
done
source bench/common.sh
out=$(mktemp -d)
raw="bench/results/non-affine-speed-$(date -u +%Y%m%dT%H%M%SZ).jsonl"
trap 'rm -rf "$out"' EXIT
diffeo_run() { # data flow steps lr
  local c=$1 flow=$2 n=$3 lr=$4
  "$bin" fit --data "$data/$c/train.npy" --val "$out/val.npy" --flow "$flow" --steps "$n" --batch 512 --lr "$lr" \
    --schedule constant --eval-every "$n" --out "$out/m.dfo" > "$out/fit.log" 2>&1
  local t; t=$(tr '\r' '\n' < "$out/fit.log" | grep -o '([0-9]* steps, [0-9.]* s)' | tail -1 | sed 's/.*steps, \([0-9.]*\) s)/\1/')
  # The rate: the whole command on the test set tiled to ≥ 100,000 rows (start-up amortized).
  local s; s=$(date +%s.%N)
  local ll; ll=$("$bin" eval --model "$out/m.dfo" --data "$out/test-tiled.npy" --json)
  local e; e=$(printf "%.3f" "$(echo "$(date +%s.%N) - $s" | bc)")
  local rows tiled; read -r rows tiled < "$out/rows"
  # A tiled set repeats rows (its n and stderr are not the test set's): evaluate the set itself.
  [ "$tiled" != "$rows" ] && ll=$("$bin" eval --model "$out/m.dfo" --data "$data/$c/test.npy" --json)
  echo "{\"lib\": \"diffeo\", \"model\": \"$flow\", \"data\": \"$c\", \"steps\": $n, \"steps_per_s\": $(printf "%.3f" "$(echo "scale=6; $n / $t" | bc)"), \"eval_s\": $e, \"eval_rows\": $tiled, \"eval\": $ll}" >> "$raw"
}
for c in $configs; do
  # The final validation is inside diffeo's timed fit: at most 2,000 rows of it.
  "$py" -c 'import numpy as np, sys; np.save(sys.argv[2], np.load(sys.argv[1])[:2000])' "$data/$c/val.npy" "$out/val.npy"
  "$py" -c 'import numpy as np, sys; x = np.load(sys.argv[1]); t = np.tile(x, (-(-100000 // len(x)), 1)); np.save(sys.argv[2], t); open(sys.argv[3], "w").write(f"{len(x)} {len(t)}\n")' \
    "$data/$c/test.npy" "$out/test-tiled.npy" "$out/rows"
  for m in $models; do
    case "$m" in
      naf) diffeo_run "$c" naf "$steps" 1e-3
           "$py" bench/non-affine/peers.py --lib zuko --model naf --data "$data/$c" --steps "$steps" >> "$raw" ;;
      umnn) diffeo_run "$c" umnn "$umnn_steps" 1e-3
            "$py" bench/non-affine/peers.py --lib zuko --model unaf --data "$data/$c" --steps "$umnn_steps" >> "$raw" ;;
      bnaf) diffeo_run "$c" bnaf "$steps" 1e-2
            "$py" bench/non-affine/peers.py --lib flowjax --model bnaf --data "$data/$c" --steps "$steps" --lr 1e-2 >> "$raw" ;;
      *) echo "unknown model $m (naf, umnn, bnaf)" >&2; exit 2 ;;
    esac
  done
done
python3 bench/non-affine/summary.py "$raw" --section
echo "raw lines: $raw"
