#!/usr/bin/env bash
# Glow beside normflows' Glow on MNIST-sized images, one interleaved run: training steps/s at the same
# architecture (L levels × K steps, hidden channels, batch), Adam at a constant rate and no weight
# averaging on both sides,
# then log_prob images/s on the test images and sampling images/s. Writes one JSON line per run to
# bench/results/images-speed-TIME.jsonl and prints the rows (bench/images/summary.py).
# diffeo's training rate is over `diffeo fit` with a 64-image validation set (its final validation
# is inside the timed fit); its log_prob rate is over the whole `diffeo eval` command on the test
# images; its sampling rate over `diffeo sample -n 2000` (normflows draws 2,000 in batches of 64).
#   bench/images/speed.sh DATA_DIR [--steps N] [--levels L] [--steps-per-level K] [--hidden C]
#                                  [--batch B] [--eval-n N] [--repeats R]
# DATA_DIR holds train-images-idx3-ubyte.gz and t10k-images-idx3-ubyte.gz (../shared/data/mnist).
set -euo pipefail
cd "$(dirname "$0")/../.."
dir="${1:?usage: bench/images/speed.sh DATA_DIR [options]}"; shift
steps=100; levels=2; k=8; hidden=64; batch=64; eval_n=2000; repeats=1
while [ $# -gt 0 ]; do
  case "$1" in
    --steps) steps="$2"; shift 2 ;;
    --levels) levels="$2"; shift 2 ;;
    --steps-per-level) k="$2"; shift 2 ;;
    --hidden) hidden="$2"; shift 2 ;;
    --batch) batch="$2"; shift 2 ;;
    --eval-n) eval_n="$2"; shift 2 ;;
    --repeats) repeats="$2"; shift 2 ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
done
source bench/common.sh
train="$dir/train-images-idx3-ubyte.gz"; test="$dir/t10k-images-idx3-ubyte.gz"
out=$(mktemp -d)
raw="bench/results/images-speed-$(date -u +%Y%m%dT%H%M%SZ).jsonl"
trap 'rm -rf "$out"' EXIT
# The first test images as .npy arrays [N, 28, 28] (uint8): a 64-image validation set and the
# evaluation set.
"$py" - "$test" "$out" "$eval_n" <<'PY'
import gzip, sys, numpy as np
b = gzip.open(sys.argv[1]).read() if sys.argv[1].endswith(".gz") else open(sys.argv[1], "rb").read()
r = b[3]; dims = [int.from_bytes(b[4 + 4 * k:8 + 4 * k], "big") for k in range(r)]
x = np.frombuffer(b, dtype=np.uint8, offset=4 + 4 * r).reshape(dims)
np.save(sys.argv[2] + "/val.npy", x[:64]); n = int(sys.argv[3]); np.save(sys.argv[2] + "/test.npy", x[:n] if n > 0 else x)
PY
sizes=(--levels "$levels" --steps-per-level "$k" --hidden-channels "$hidden")
for r in $(seq "$repeats"); do
  "$bin" fit --data "$train" --val "$out/val.npy" --flow glow "${sizes[@]}" --dequantize --steps "$steps" --batch "$batch" \
    --schedule constant --average-decay 0 --eval-every "$steps" --out "$out/m.dfo" > "$out/fit.log" 2>&1
  t=$(tr '\r' '\n' < "$out/fit.log" | grep -o '([0-9]* steps, [0-9.]* s)' | tail -1 | sed 's/.*steps, \([0-9.]*\) s)/\1/')
  s=$(date +%s.%N); ev=$("$bin" eval --model "$out/m.dfo" --data "$out/test.npy" --bits-per-dim --json); e=$(echo "$(date +%s.%N) - $s" | bc)
  s=$(date +%s.%N); "$bin" sample --model "$out/m.dfo" -n 2000 --out "$out/s.npy"; sm=$(echo "$(date +%s.%N) - $s" | bc)
  n=$(echo "$ev" | sed 's/.*"n":\([0-9]*\).*/\1/')
  params=$("$bin" info --model "$out/m.dfo" --json | sed 's/.*"parameters":\([0-9]*\).*/\1/')
  echo "{\"lib\": \"diffeo\", \"model\": \"glow\", \"levels\": $levels, \"steps_per_level\": $k, \"hidden\": $hidden, \"batch\": $batch, \"steps\": $steps, \"train_s\": $t, \"steps_per_s\": $(echo "scale=6; $steps / $t" | bc), \"logprob_per_s\": $(echo "scale=3; $n / $e" | bc), \"sample_per_s\": $(echo "scale=3; 2000 / $sm" | bc), \"n_params\": $params, \"eval\": $ev}" >> "$raw"
  "$py" bench/images/normflows_glow.py --train "$train" --test "$test" --steps "$steps" --levels "$levels" --steps-per-level "$k" \
    --hidden "$hidden" --batch "$batch" --eval-n "$eval_n" --samples 2000 >> "$raw"
done
"$py" bench/images/summary.py "$raw"
echo "raw lines: $raw"
