#!/usr/bin/env bash
# The issue's default check for residual flows: on the 6-D banana (bench/cnf/banana.py),
# `diffeo fit --flow residual --steps 3000 --batch 512` with no other flag beside NSF-AR at the
# same steps and batch. Prints one line per model: test log-likelihood, time.
#   bench/residual/defaults.sh [OUT_DIR]
set -euo pipefail
cd "$(dirname "$0")/../.."
out="${1:-$HOME/.cache/diffeo/cnf-banana}"
source bench/common.sh
banana_data "$out"
fit_and_eval "$out" nsf --flow nsf --steps 3000 --batch 512
fit_and_eval "$out" residual --flow residual --steps 3000 --batch 512
