#!/usr/bin/env bash
# The issue's default check for residual flows: on the 6-D banana (bench/cnf/banana.py),
# `diffeo fit --flow residual --steps 3000 --batch 512` with no other flag beside NSF-AR at the
# same steps and batch. Prints one line per model: test log-likelihood, time.
#   bench/residual/defaults.sh [OUT_DIR]
set -euo pipefail
cd "$(dirname "$0")/../.."
out="${1:-$HOME/.cache/diffeo/cnf-banana}"
py="${PEERS_PY:-$HOME/.venv-peers/bin/python}"
command -v "$py" >/dev/null || py=python3
bin="${DIFFEO_BIN:-target/release/diffeo}"
[ -x "$bin" ] || cargo build -q --release -p diffeo-cli
[ -f "$out/test.csv" ] || "$py" bench/cnf/banana.py "$out"
run() {
  local name=$1; shift
  local s=$(date +%s.%N)
  "$bin" fit --data "$out/train.csv" --val "$out/val.csv" "$@" --out "$out/$name.dfo" -q
  local t=$(echo "$(date +%s.%N) - $s" | bc)
  local ll=$("$bin" eval --model "$out/$name.dfo" --data "$out/test.csv" --json)
  echo "$name: $ll  fit ${t}s  ($*)"
}
run nsf --flow nsf --steps 3000 --batch 512
run residual --flow residual --steps 3000 --batch 512
