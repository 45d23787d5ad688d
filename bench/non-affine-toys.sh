#!/usr/bin/env bash
# The non-affine families on the eight FFJORD toys: `diffeo fit --flow F --steps STEPS` (defaults
# otherwise) for each F in FLOWS, test log-likelihood, and a density/sample figure per toy and flow
# in docs/non-affine/ (the sampling figures need an inverse: none for bnaf). MAF and NSF at the
# same steps: docs/cnf.md's table (bench/cnf/toys.sh).
#   bench/non-affine-toys.sh [STEPS] ["naf umnn sos bnaf"] [OUT_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
steps="${1:-1000}"; flows="${2:-naf umnn sos bnaf}"; out="${3:-$HOME/.cache/diffeo/non-affine-toys}"
source bench/common.sh
mkdir -p "$out" docs/non-affine
echo "| toy | $(echo $flows | sed 's/ / | /g') |"
echo "|---|$(for f in $flows; do printf -- '---|'; done)"
for toy in moons circles 8gaussians pinwheel 2spirals checkerboard rings swissroll; do
  row="| $toy |"
  for f in $flows; do
    "$bin" fit --data "builtin:$toy" --flow "$f" --steps "$steps" --out "$out/$toy-$f.dfo" -q 2>/dev/null
    [ "$f" = bnaf ] || "$bin" plot --model "$out/$toy-$f.dfo" --data "builtin:$toy:test" --out "docs/non-affine/$toy-$f.png" 2>/dev/null
    row="$row $(printf '%.3f' "$(test_ll "$out/$toy-$f.dfo" "builtin:$toy:test")") |"
  done
  echo "$row"
done
