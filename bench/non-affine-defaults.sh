#!/usr/bin/env bash
# The issue's default check for the non-affine transformers: on the 6-D banana
# (bench/cnf/banana.py), `diffeo fit --flow naf|umnn|sos --steps 3000 --batch 512` with no other
# flag beside NSF-AR at the same steps and batch. One line per model: test evaluation, time.
#   bench/non-affine-defaults.sh [OUT_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-$HOME/.cache/diffeo/cnf-banana}"
source bench/common.sh
banana_data "$out"
for flow in nsf naf umnn sos; do
  fit_and_eval "$out" "$flow" --flow "$flow" --steps 3000 --batch 512
done
