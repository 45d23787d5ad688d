#!/usr/bin/env bash
# CNF speed and quality beside zuko's CNF, one interleaved run: `diffeo bench --config cnf-DATA`
# and bench/cnf/zuko_cnf.py on the peers' data folder (same 64×2 ELU field, 3 time frequencies,
# exact trace, Dormand–Prince atol 1e-6 / rtol 1e-5, Adam 1e-3, batch, steps, seed); diffeo
# trains once by backpropagation through the solver and once by the adjoint method (zuko's way).
#   bench/cnf.sh [--data DIR] [--steps N] [--repeats R] [--configs "moons"]
set -euo pipefail
cd "$(dirname "$0")/.."
data="${PEERS_DATA:-$HOME/.cache/diffeo/peers-data}"; steps=300; repeats=1; configs="moons"
while [ $# -gt 0 ]; do
  case "$1" in
    --data) data="$2"; shift 2 ;;
    --steps) steps="$2"; shift 2 ;;
    --repeats) repeats="$2"; shift 2 ;;
    --configs) configs="$2"; shift 2 ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
done
py="${PEERS_PY:-$HOME/.venv-peers/bin/python}"
cargo build -q --release -p diffeo-cli
raw="bench/results/cnf-$(date -u +%Y%m%dT%H%M%SZ).jsonl"
for r in $(seq "$repeats"); do
  for c in $configs; do
    for gradient in backprop adjoint; do
      target/release/diffeo bench --config "cnf-$c" --data-dir "$data" --steps "$steps" --threads 2 --gradient "$gradient" | tail -1 >> "$raw"
    done
    "$py" bench/cnf/zuko_cnf.py --data "$data/$c" --steps "$steps" --threads 2 >> "$raw"
  done
done
"$py" bench/cnf/summary.py "$raw" --section
echo "raw lines: $raw"
