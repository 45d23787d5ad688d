#!/usr/bin/env bash
# Image flows at a wall-clock budget, beside normflows' Glow on the same machine, one after the
# other: `diffeo fit --flow glow --dequantize --time-budget BUDGET` with no other flag (the defaults
# under test), then normflows' Glow example at its sizes (2 levels × 8 steps, 64 hidden channels,
# batch 64, Adam 1e-3) for the same training time. Both report test bits/dim on the whole test set
# (dequantized once, seeded). Writes bench/results/images-BUDGET-TIME.jsonl, a sample grid per run
# (docs/images/glow-mnist-BUDGET.png with --grids), and prints the rows.
#   bench/images.sh DATA_DIR BUDGET_SECONDS [--flow glow] [--grids] [--skip-peer] [--fit-flags "FLAGS"]
#                   [--seed S] [--interleaved]
# --fit-flags adds flags to diffeo's fit (e.g. "--variational-dequantization"); they are recorded in
# the row and name the model file. --seed seeds both (default 0). --interleaved runs the two at the
# same time, taking turns on the machine every 10 s (SIGSTOP/SIGCONT), each with a wall-clock budget
# of 2 × BUDGET, so that both train BUDGET seconds at the same machine speed (a machine whose speed
# drifts between hours makes runs one after the other differ by ±8 % in steps).
# DATA_DIR holds train-images-idx3-ubyte.gz and t10k-images-idx3-ubyte.gz (../shared/data/mnist, or
# any 28×28 or 32×32 grayscale IDX set under those names).
set -euo pipefail
cd "$(dirname "$0")/.."
dir="${1:?usage: bench/images.sh DATA_DIR BUDGET_SECONDS [options]}"; budget="${2:?usage: bench/images.sh DATA_DIR BUDGET_SECONDS}"; shift 2
flow=glow; grids=0; peer=1; flags=; seed=0; interleaved=0
while [ $# -gt 0 ]; do
  case "$1" in
    --seed) seed="$2"; shift 2 ;;
    --interleaved) interleaved=1; shift ;;
    --flow) flow="$2"; shift 2 ;;
    --grids) grids=1; shift ;;
    --skip-peer) peer=0; shift ;;
    --fit-flags) flags="$2"; shift 2 ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
done
[ "$interleaved" = 0 ] || [ "$peer" = 1 ] || { echo "--interleaved needs the peer (drop --skip-peer)" >&2; exit 2; }
source bench/common.sh
train="$dir/train-images-idx3-ubyte.gz"; test="$dir/t10k-images-idx3-ubyte.gz"
raw="bench/results/images-$budget-$(date -u +%Y%m%dT%H%M%SZ).jsonl"
models="bench/results/models"; mkdir -p "$models"
tag=$(echo "$flags" | tr -c 'a-z0-9\n' '-' | tr -s '-' | sed 's/^-*//; s/-*$//')
[ "$seed" = 0 ] || tag="${tag:+$tag-}seed-$seed"
[ "$interleaved" = 1 ] && tag="${tag:+$tag-}interleaved"
model="$models/$flow${tag:+-$tag}-$(basename "$dir")-$budget.dfo"
log="${raw%.jsonl}.log"
peer_row="${raw%.jsonl}.peer.json"
wall_budget=$budget
[ "$interleaved" = 1 ] && wall_budget=$((2 * budget))
peer_run() {
  exec "$py" bench/images/normflows_glow.py --train "$train" --test "$test" --budget "$wall_budget" --seed "$seed" --eval-n 0 --samples 64 > "$peer_row"
}
s=$(date +%s.%N)
# shellcheck disable=SC2086  # the extra flags are words
"$bin" fit --data "$train" --flow "$flow" --dequantize --time-budget "$wall_budget" --seed "$seed" $flags --out "$model" > "$log" 2>&1 &
ours=$!
if [ "$interleaved" = 1 ]; then
  (peer_run) & theirs=$!
  kill -STOP $theirs
  trap 'kill -CONT $ours $theirs 2>/dev/null' EXIT
  on=$ours; off=$theirs
  while kill -0 $ours 2>/dev/null && kill -0 $theirs 2>/dev/null; do
    sleep 10
    kill -STOP $on 2>/dev/null || true; kill -CONT $off 2>/dev/null || true
    t=$on; on=$off; off=$t
  done
  # One has ended (after its budget): the other finishes alone.
  kill -CONT $ours $theirs 2>/dev/null || true
fi
wait $ours
wall=$(echo "$(date +%s.%N) - $s" | bc)
ev=$("$bin" eval --model "$model" --data "$test" --bits-per-dim --json)
params=$("$bin" info --model "$model" --json | sed 's/.*"parameters":\([0-9]*\).*/\1/')
steps=$(tr '\r' '\n' < "$log" | grep -o '([0-9]* steps, [0-9.]* s)' | tail -1 | sed 's/(\([0-9]*\) steps.*/\1/')
echo "{\"lib\": \"diffeo\", \"model\": \"$flow\", \"flags\": \"$flags\", \"seed\": $seed, \"interleaved\": $interleaved, \"data\": \"$(basename "$dir")\", \"budget_s\": $budget, \"steps\": $steps, \"wall_s\": $wall, \"n_params\": $params, \"eval\": $ev}" >> "$raw"
if [ "$grids" = 1 ]; then
  mkdir -p docs/images
  "$bin" plot --model "$model" --data "$test" --n 36 --out "docs/images/$flow${tag:+-$tag}-$(basename "$dir")-$budget.png"
fi
if [ "$interleaved" = 1 ]; then
  wait $theirs
  cat "$peer_row" >> "$raw"; rm -f "$peer_row"
elif [ "$peer" = 1 ]; then
  (peer_run); cat "$peer_row" >> "$raw"; rm -f "$peer_row"
fi
"$py" - "$raw" <<'PY'
import json, sys
for line in open(sys.argv[1]):
    r = json.loads(line)
    if r["lib"] == "diffeo":
        e = r["eval"]
        flags = f" {r['flags']}" if r.get("flags") else ""
        print(f"| diffeo {r['model']}{flags} | {r['budget_s']} s | {r['steps']} | {e['bits_per_dim']:.3f} ± {e['bits_per_dim_stderr']:.3f} | {r['n_params']:,} |")
    else:
        print(f"| normflows Glow | {r['train_s']:.0f} s | {r['steps']} | {r['test_bpd']:.3f} ± {r['test_bpd_stderr']:.3f} | {r['n_params']:,} |")
PY
echo "raw lines: $raw"
