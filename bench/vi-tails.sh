#!/usr/bin/env bash
# Spline tails on the wide and curved VI targets (issue 16): `diffeo vi` with each flow's defaults
# on rosenbrock, banana-strong and funnel (d = 10), seeds 0–2, the affine IAF as the reference;
# the spline coupling flow with its defaults (8 layers, affine tails), with 4 layers, and as it was
# before (4 layers, identity tails).
# One JSON line per run (with the flow's flags) to bench/results/vi-tails-TIME.jsonl; a table of
# KL and k̂ per seed on stdout.
#   bench/vi-tails.sh [SEEDS="0 1 2"] [FLOWS as "name[:flags];…"]
set -euo pipefail
cd "$(dirname "$0")/.."
seeds="${1:-0 1 2}"
flows="${2:-iaf;nsf-coupling;nsf-coupling:--transforms 4;nsf-coupling:--transforms 4 --spline-tails identity}"
source bench/common.sh
raw="bench/results/vi-tails-$(date -u +%Y%m%dT%H%M%SZ).jsonl"
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
IFS=';' read -ra configs <<< "$flows"
for t in rosenbrock banana-strong funnel; do
  for c in "${configs[@]}"; do
    flow="${c%%:*}"; flags=""; [ "$flow" != "$c" ] && flags="${c#*:}"
    for s in $seeds; do
      # shellcheck disable=SC2086
      line=$("$bin" vi --target "$t" --flow "$flow" $flags --seed "$s" --json --quiet --out "$out/m.dfo")
      echo "{\"config\": \"$c\", \"seed\": $s, \"result\": $line}" >> "$raw"
    done
  done
done
python3 - "$raw" <<'PY'
import json, sys
rows = {}
for l in open(sys.argv[1]):
    r = json.loads(l)
    rows.setdefault((r["result"]["target"], r["config"]), []).append(r["result"])
print("| target | flow | KL per seed (nats) | k̂ per seed | seconds (mean) |")
print("|---|---|---|---|---|")
for (t, c), rs in rows.items():
    kl = " ".join(f"{x['kl']:.3f}" for x in rs)
    kh = " ".join(f"{x['khat']:.2f}" for x in rs)
    print(f"| {t} | {c.replace(':', ' ')} | {kl} | {kh} | {sum(x['seconds'] for x in rs) / len(rs):.0f} |")
PY
echo "raw lines: $raw"
