#!/usr/bin/env bash
# Spline tails in density estimation (issue 16): the new default (affine tails) against the identity
# tails of earlier models, same seed, steps and batch, on the 6-D banana (bench/cnf/banana.py;
# `fit --flow nsf|nsf-coupling --steps 3000 --batch 512`) and on POWER (`--steps STEPS`, default
# 6000, batch 512; needs DATA_ROOT/power/householdpower.csv.gz). One line per model: test
# evaluation, time.
#   bench/spline-tails-density.sh DATA_ROOT [POWER_STEPS] [OUT_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
root="${1:?usage: bench/spline-tails-density.sh DATA_ROOT [POWER_STEPS] [OUT_DIR]}"
power_steps="${2:-6000}"
out="${3:-$HOME/.cache/diffeo/cnf-banana}"
source bench/common.sh
banana_data "$out"
for flow in nsf nsf-coupling; do
  for tails in affine identity; do
    fit_and_eval "$out" "$flow-$tails" --flow "$flow" --spline-tails "$tails" --steps 3000 --batch 512
  done
done
for tails in affine identity; do
  s=$(date +%s.%N)
  "$bin" fit --data builtin:power --data-root "$root" --flow nsf --spline-tails "$tails" --steps "$power_steps" --batch 512 \
    --eval-every "$power_steps" --out "$out/power-$tails.dfo" -q
  t=$(echo "$(date +%s.%N) - $s" | bc)
  echo "power-nsf-$tails: $("$bin" eval --model "$out/power-$tails.dfo" --data builtin:power:test --data-root "$root" --json)  fit ${t}s"
done
