#!/usr/bin/env bash
# The cheap proper score used to choose the posterior defaults (docs/sbi-benchmark.md): the mean
# log q(θ | x_o) of sbibm's 10,000 reference samples, averaged over observations 1–10, for one
# `diffeo npe` fit on 10,000 simulations (seed 0; the fit's seed $SEED, default 0) with the given flags.
# Prints one line per task.
#
#   bench/sbi/logq.sh "two_moons slcp" [npe flags...]      (e.g. --ensemble 1 --spline-tails identity)
#
# Needs $PYTHON (default ~/.venv-peers/bin/python) with numpy; the reference data as for bench/sbi.sh.
set -euo pipefail
cd "$(dirname "$0")/../.."
PYTHON="${PYTHON:-$HOME/.venv-peers/bin/python}"
tasks="$1"; shift
REF="$HOME/.cache/diffeo/sbibm"
[ -f "$REF/slcp/obs10/reference.csv" ] || "$PYTHON" bench/sbi/reference.py "$REF"
if [ -z "${DIFFEO:-}" ]; then
  cargo build -q -p diffeo-cli
  DIFFEO="${CARGO_TARGET_DIR:-$PWD/target}/debug/diffeo"
fi
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
dims() { case "$1" in two_moons|gaussian_mixture) echo "2 2" ;; gaussian_linear) echo "10 10" ;; slcp) echo "5 8" ;; esac; }
for task in $tasks; do
  read -r D K < <(dims "$task")
  prior=$("$PYTHON" bench/sbi/tasks.py prior "$task")
  "$PYTHON" bench/sbi/tasks.py sims "$task" 10000 --seed 0 > "$out/sims.csv"
  start=$(date +%s.%N)
  "$DIFFEO" npe --data "$out/sims.csv" --theta-cols "0-$((D - 1))" --x-cols "$D-$((D + K - 1))" --prior "$prior" --seed "${SEED:-0}" \
    --out "$out/m.dfo" --quiet "$@"
  train_s=$(echo "$(date +%s.%N) - $start" | bc)
  for k in 1 2 3 4 5 6 7 8 9 10; do
    "$DIFFEO" log-prob --model "$out/m.dfo" --data "$REF/$task/obs$k/reference.csv" \
      --observation "$REF/$task/obs$k/observation.csv" --out "$out/lp$k.npy" > /dev/null
  done
  "$PYTHON" - "$out" "$task" "$train_s" "$*" <<'EOF'
import sys, numpy as np
out, task, train_s, flags = sys.argv[1:]
means = [float(np.mean(np.load(f"{out}/lp{k}.npy"))) for k in range(1, 11)]
print(f"{task}: mean log q(reference) {np.mean(means):.3f} (observations: {' '.join(f'{m:.2f}' for m in means)}), training {float(train_s):.0f} s, flags: {flags or 'defaults'}")
EOF
done
