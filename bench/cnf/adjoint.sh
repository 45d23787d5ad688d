#!/usr/bin/env bash
# Backpropagation through the solver vs the adjoint method: `diffeo fit --flow cnf` on the
# built-in moons, STEPS steps of batch 512, at zuko's tolerances and at 1e-8, interleaved.
# Prints per run: wall clock, peak memory (max RSS), test log-likelihood.
#   bench/cnf/adjoint.sh [STEPS]
set -euo pipefail
cd "$(dirname "$0")/../.."
steps="${1:-200}"
source bench/common.sh
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
for tol in "1e-6 1e-5" "1e-8 1e-8"; do
  set -- $tol
  for gradient in backprop adjoint; do
    /usr/bin/time -f "%e %M" -o "$out/time" "$bin" fit --data builtin:moons --flow cnf --steps "$steps" --batch 512 \
      --eval-every "$steps" --atol "$1" --rtol "$2" --gradient "$gradient" --out "$out/m.dfo" -q 2>/dev/null
    read -r secs rss < "$out/time"
    ll=$("$bin" eval --model "$out/m.dfo" --data builtin:moons:test --json | python3 -c 'import json,sys; print("%.3f" % json.load(sys.stdin)["log_likelihood"])')
    printf "atol %s rtol %s %-8s: %6.1f s, peak memory %4d MB, test LL %s\n" "$1" "$2" "$gradient" "$secs" $((rss / 1024)) "$ll"
  done
done
