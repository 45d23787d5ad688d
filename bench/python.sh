#!/usr/bin/env bash
# The Python package beside the Rust library and zuko, on two moons (MAF: 5 transforms, 128×128):
# log_prob of 1, 1,000 and 100,000 rows from Python (Flow.log_prob) and from Rust
# (pipeline::log_density, the call behind it; crates/diffeo/examples/log_density_timing.rs) and
# zuko's; a 2,000-step fit (batch 512, Adam 1e-3 at a constant rate as zuko's loop; diffeo
# validates on its 10 % hold-out as users get it) from Python, from the command line and zuko's loop.
# The Rust side uses the front ends' allocator (mimalloc).
# Four interleaved rounds, one process per measurement (log_prob: the fastest of 5 blocks of
# calls of >= 0.3 s each, on both sides); prints the medians and writes the raw
# lines to bench/results/python-TIME.jsonl. Builds the release wheel into the peers' virtual
# environment (PEERS_PY; maturin from PyPI) first.
#   bench/python.sh
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/common.sh
"$py" -m pip install --quiet --disable-pip-version-check maturin
"$(dirname "$py")/maturin" build --release --manifest-path crates/diffeo-py/Cargo.toml --out target/wheels
"$py" -m pip install --quiet --disable-pip-version-check --force-reinstall --no-deps target/wheels/diffeo-*.whl
cargo build -q --release --example log_density_timing -p diffeo
work=$(mktemp -d); trap 'rm -rf "$work"' EXIT
"$py" - "$work" <<'PY'
import sys
import numpy as np
rng = np.random.default_rng(0)
def moons(n):
    t, upper = rng.uniform(0, np.pi, n), rng.random(n) < 0.5
    x = np.where(upper[:, None], np.c_[np.cos(t), np.sin(t)], np.c_[1 - np.cos(t), 0.5 - np.sin(t)])
    return (x + 0.05 * rng.normal(size=x.shape)).astype(np.float64)
np.save(f"{sys.argv[1]}/train.npy", moons(45000))
np.save(f"{sys.argv[1]}/test.npy", moons(100000))
PY
raw="bench/results/python-$(date -u +%Y%m%dT%H%M%SZ).jsonl"
for round in 1 2 3 4; do
  "$py" bench/python/overhead.py --what diffeo-py-fit --train "$work/train.npy" --test "$work/test.npy" --out "$work/m.dfo" >> "$raw"
  s=$(date +%s.%N)
  "$bin" fit --data "$work/train.npy" --steps 2000 --batch 512 --schedule constant --quiet --out "$work/cli.dfo"
  wall=$(echo "$(date +%s.%N) - $s" | bc)
  secs=$("$bin" info --model "$work/cli.dfo" --json | sed 's/.*"seconds":\([0-9.e]*\).*/\1/')
  echo "{\"lib\": \"diffeo-cli\", \"fit_seconds\": $secs, \"wall_seconds\": $wall, \"steps_per_s\": $(echo "2000 / $secs" | bc -l), \"test_ll\": $(test_ll "$work/cli.dfo" "$work/test.npy")}" >> "$raw"
  "$py" bench/python/overhead.py --what zuko-fit --train "$work/train.npy" --test "$work/test.npy" >> "$raw"
  # Python and Rust back to back, in alternating order (the order within a round matters at
  # the 1 % level on this machine: what ran just before warms or cools it).
  for side in $([ $((round % 2)) = 1 ] && echo "py rust" || echo "rust py"); do
    if [ "$side" = py ]; then
      "$py" bench/python/overhead.py --what diffeo-py --model "$work/m.dfo" --rows "$work/test.npy" >> "$raw"
    else
      target/release/examples/log_density_timing "$work/m.dfo" "$work/test.npy" 1 1000 100000 >> "$raw"
    fi
  done
  "$py" bench/python/overhead.py --what zuko --rows "$work/test.npy" >> "$raw"
done
"$py" - "$raw" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
med = lambda xs: statistics.median(xs)
print("| log_prob rows | diffeo from Python (rows/s) | diffeo from Rust (rows/s) | Python ÷ Rust time (medians) | per round | zuko (rows/s) | diffeo-py ÷ zuko speed |")
print("|---|---|---|---|---|---|---|")
for n in (1, 1000, 100000):
    t = {lib: [x["seconds_per_call"] for x in rows if x.get("rows") == n and x["lib"] == lib] for lib in ("diffeo-py", "diffeo-rust", "zuko")}
    r = {lib: med(v) for lib, v in t.items()}
    paired = ", ".join(f"{a / b:.2f}" for a, b in zip(t["diffeo-py"], t["diffeo-rust"]))
    print(f"| {n:,} | {n / r['diffeo-py']:,.0f} | {n / r['diffeo-rust']:,.0f} | {r['diffeo-py'] / r['diffeo-rust']:.3f} | {paired} | {n / r['zuko']:,.0f} | {r['zuko'] / r['diffeo-py']:.2f}× |")
print()
print("| fit (2,000 steps, batch 512) | steps/s | test log-likelihood |")
print("|---|---|---|")
for lib in ("diffeo-py", "diffeo-cli", "zuko"):
    f = [x for x in rows if "fit_seconds" in x and x["lib"] == lib]
    print(f"| {lib} | {med([x['steps_per_s'] for x in f]):.1f} | {med([x['test_ll'] for x in f]):.4f} |")
PY
echo "raw lines: $raw"
