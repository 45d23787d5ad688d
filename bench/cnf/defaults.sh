#!/usr/bin/env bash
# The issue's default check: on the 6-D banana (bench/cnf/banana.py), `diffeo fit --flow cnf
# --time-budget 600` by likelihood and by flow matching, with no other flag, against NSF-AR
# (`--flow nsf --steps 3000 --batch 512`). Prints one line per model: test log-likelihood, time.
#   bench/cnf/defaults.sh [OUT_DIR] [BUDGET_SECONDS]
set -euo pipefail
cd "$(dirname "$0")/../.."
out="${1:-$HOME/.cache/diffeo/cnf-banana}"
budget="${2:-600}"
source bench/common.sh
banana_data "$out"
"$py" - "$out" <<'PY'
import sys, numpy as np
sys.path.insert(0, "bench/cnf")
from banana import log_prob
print(f"exact: {log_prob(np.loadtxt(sys.argv[1] + '/test.csv', delimiter=',')).mean():.4f}")
PY
fit_and_eval "$out" nsf --flow nsf --steps 3000 --batch 512
fit_and_eval "$out" cnf-likelihood --flow cnf --time-budget "$budget"
fit_and_eval "$out" cnf-flow-matching --flow cnf --objective flow-matching --time-budget "$budget"
