#!/usr/bin/env bash
# The eight FFJORD toys: MAF and NSF (--steps S) beside CNFs trained by likelihood and by flow
# matching (--time-budget B each), test log-likelihood against each toy's entropy bound, and a
# density/sample figure per CNF in docs/cnf/.
#   bench/cnf/toys.sh [STEPS] [BUDGET_SECONDS] [OUT_DIR]
set -euo pipefail
cd "$(dirname "$0")/../.."
steps="${1:-1000}"; budget="${2:-60}"; out="${3:-$HOME/.cache/diffeo/cnf-toys}"
source bench/common.sh
mkdir -p "$out" docs/cnf
ll() { test_ll "$1" "builtin:$2:test"; }
echo "| toy | maf ($steps steps) | nsf ($steps steps) | cnf likelihood (${budget} s) | cnf flow matching (${budget} s) |"
echo "|---|---|---|---|---|"
for toy in moons circles 8gaussians pinwheel 2spirals checkerboard rings swissroll; do
  "$bin" fit --data "builtin:$toy" --flow maf --steps "$steps" --out "$out/$toy-maf.dfo" -q
  "$bin" fit --data "builtin:$toy" --flow nsf --steps "$steps" --out "$out/$toy-nsf.dfo" -q 2>/dev/null
  "$bin" fit --data "builtin:$toy" --flow cnf --time-budget "$budget" --out "$out/$toy-cnf.dfo" -q 2>/dev/null
  "$bin" fit --data "builtin:$toy" --flow cnf --objective flow-matching --time-budget "$budget" --out "$out/$toy-fm.dfo" -q 2>/dev/null
  "$bin" plot --model "$out/$toy-cnf.dfo" --data "builtin:$toy:test" --out "docs/cnf/$toy.png" 2>/dev/null
  printf "| %s | %.3f | %.3f | %.3f | %.3f |\n" "$toy" "$(ll "$out/$toy-maf.dfo" $toy)" "$(ll "$out/$toy-nsf.dfo" $toy)" \
    "$(ll "$out/$toy-cnf.dfo" $toy)" "$(ll "$out/$toy-fm.dfo" $toy)"
done
