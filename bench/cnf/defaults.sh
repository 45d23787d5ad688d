#!/usr/bin/env bash
# The issue's default check: on the 6-D banana (bench/cnf/banana.py), `diffeo fit --flow cnf
# --time-budget 600` by likelihood and by flow matching, with no other flag, against NSF-AR
# (`--flow nsf --steps 3000 --batch 512`). Prints one line per model: test log-likelihood, time.
#   bench/cnf/defaults.sh [OUT_DIR] [BUDGET_SECONDS]
set -euo pipefail
cd "$(dirname "$0")/../.."
out="${1:-$HOME/.cache/diffeo/cnf-banana}"
budget="${2:-600}"
py="${PEERS_PY:-$HOME/.venv-peers/bin/python}"
command -v "$py" >/dev/null || py=python3
bin="${DIFFEO_BIN:-target/release/diffeo}"
[ -x "$bin" ] || cargo build -q --release -p diffeo-cli
[ -f "$out/test.csv" ] || "$py" bench/cnf/banana.py "$out"
"$py" - "$out" <<'PY'
import sys, numpy as np
sys.path.insert(0, "bench/cnf")
from banana import log_prob
print(f"exact: {log_prob(np.loadtxt(sys.argv[1] + '/test.csv', delimiter=',')).mean():.4f}")
PY
run() {
  local name=$1; shift
  local s=$(date +%s.%N)
  "$bin" fit --data "$out/train.csv" --val "$out/val.csv" "$@" --out "$out/$name.dfo" -q
  local t=$(echo "$(date +%s.%N) - $s" | bc)
  local ll=$("$bin" eval --model "$out/$name.dfo" --data "$out/test.csv" --json)
  echo "$name: $ll  fit ${t}s  ($*)"
}
run nsf --flow nsf --steps 3000 --batch 512
run cnf-likelihood --flow cnf --time-budget "$budget"
run cnf-flow-matching --flow cnf --objective flow-matching --time-budget "$budget"
