#!/usr/bin/env bash
# Variational inference on Rezende & Mohamed's energies U1–U4 with four flow families (as in their
# figure 3), plus Neal's funnel with an affine vs a spline flow, by the release build (or
# $DIFFEO_BIN). Writes one JSON line per run to bench/results/vi.jsonl, a markdown table to
# bench/results/vi.md and figures to docs/vi/.
#
#   bench/vi.sh [STEPS=5000]
set -euo pipefail
cd "$(dirname "$0")/.."
steps="${1:-5000}"
source bench/common.sh
out=bench/results
mkdir -p "$out" docs/vi
: > "$out/vi.jsonl"
field() { grep -o "\"$1\":[^,}]*" | head -1 | cut -d: -f2; }
run() { # target flow [extra flags]
  local t="$1" f="$2"; shift 2
  local model="$out/vi-$t-$f.dfo"
  local line
  line=$("$bin" vi --target "$t" --flow "$f" --steps "$steps" --seed 1 --json --quiet --out "$model" "$@")
  echo "$line" >> "$out/vi.jsonl"
  if [ "$t" != funnel ]; then "$bin" plot --model "$model" --out "docs/vi/$t-$f.png" --seed 2; fi
  echo "$line"
}
for t in u1 u2 u3 u4; do
  for f in planar radial sylvester nsf-coupling; do run "$t" "$f"; done
done
run funnel iaf
run funnel nsf-coupling
{
  echo "| target | flow | KL(q‖p) nats | ELBO | IS log Z ± s.e. | true log Z | ESS/n | k̂ | seconds |"
  echo "|---|---|---|---|---|---|---|---|---|"
  while read -r l; do
    printf '| %s | %s | %.3f | %.3f | %.3f ± %.3f | %s | %.3f | %.2f | %.0f |\n' \
      "$(echo "$l" | field target | tr -d '"')" "$(echo "$l" | field flow | tr -d '"')" \
      "$(echo "$l" | field kl)" "$(echo "$l" | field elbo)" "$(echo "$l" | field log_z)" \
      "$(echo "$l" | field log_z_stderr)" "$(echo "$l" | field true_log_z)" \
      "$(echo "$l" | field ess_fraction)" "$(echo "$l" | field khat)" "$(echo "$l" | field seconds)"
  done < "$out/vi.jsonl"
} > "$out/vi.md"
cat "$out/vi.md"
