#!/usr/bin/env bash
# POWER benchmark: fit a neural spline flow on UCI household power (MAF's preprocessing) within a
# wall-clock budget and record the test log-likelihood against time (CSV + PNG).
#
#   bench/power.sh DATA_ROOT [BUDGET_SECONDS=3600] [FLOW=nsf] [extra diffeo fit flags...]
#
# DATA_ROOT holds power/householdpower.csv.gz. Results go to bench/results/power-FLOW-BUDGETs.*
# EVAL_EVERY (default 2000) sets the steps between validation/test evaluations.
set -euo pipefail
cd "$(dirname "$0")/.."
root="${1:?usage: bench/power.sh DATA_ROOT [BUDGET_SECONDS] [FLOW] [flags...]}"
budget="${2:-3600}"
flow="${3:-nsf}"
shift $(( $# < 3 ? $# : 3 ))
out="bench/results/power-${flow}-${budget}s"
mkdir -p bench/results
cargo build -q -p diffeo-cli
target="${CARGO_TARGET_DIR:-target}"
"$target/debug/diffeo" fit --data builtin:power --data-root "$root" --flow "$flow" \
  --transforms 5 --hidden 128,128 --batch 512 --lr 1e-3 --schedule cosine \
  --time-budget "$budget" --eval-every "${EVAL_EVERY:-2000}" --test builtin:power:test --curve "$out.csv" \
  --plot-loss "$out-loss.png" --out "$out.dfo" "$@" 2>&1 | tee "$out.log"
