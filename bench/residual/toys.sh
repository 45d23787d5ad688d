#!/usr/bin/env bash
# Residual flows on the eight FFJORD toys: `diffeo fit --flow residual --steps STEPS` (defaults
# otherwise), test log-likelihood, and a density/sample figure per toy in docs/residual/. MAF and
# NSF at the same steps on the same data: docs/cnf.md's table (bench/cnf/toys.sh).
#   bench/residual/toys.sh [STEPS] [OUT_DIR]
set -euo pipefail
cd "$(dirname "$0")/../.."
steps="${1:-1000}"; out="${2:-$HOME/.cache/diffeo/residual-toys}"
source bench/common.sh
mkdir -p "$out" docs/residual
echo "| toy | residual ($steps steps) | fit seconds |"
echo "|---|---|---|"
for toy in moons circles 8gaussians pinwheel 2spirals checkerboard rings swissroll; do
  s=$(date +%s.%N)
  "$bin" fit --data "builtin:$toy" --flow residual --steps "$steps" --out "$out/$toy-residual.dfo" -q 2>/dev/null
  t=$(echo "$(date +%s.%N) - $s" | bc)
  "$bin" plot --model "$out/$toy-residual.dfo" --data "builtin:$toy:test" --out "docs/residual/$toy.png" 2>/dev/null
  printf "| %s | %.3f | %.0f |\n" "$toy" "$(test_ll "$out/$toy-residual.dfo" "builtin:$toy:test")" "$t"
done
