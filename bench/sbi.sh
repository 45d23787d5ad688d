#!/usr/bin/env bash
# The sbibm benchmark of `diffeo npe`: C2ST against the sbibm reference posteriors.
#
#   bench/sbi.sh [--tasks "two_moons gaussian_linear gaussian_mixture slcp"] [--budgets "10000"]
#                [--observations "1 2 3 4 5 6 7 8 9 10"] [--sequential | --sequential-only] [--out DIR]
#
# Amortized: `diffeo npe --data SIMS --theta-cols … --x-cols … --prior SPEC --seed 0` with no
# other flag, then `diffeo posterior` (10,000 samples) at each observation. Sequential
# (--sequential): `diffeo npe --simulator "python bench/sbi/tasks.py simulate TASK" --observation
# OBS --rounds 10 --simulations BUDGET` per observation. C2ST: bench/sbi/c2st.py (sbibm's
# protocol). Needs Python with numpy and scikit-learn ($PYTHON, default ~/.venv-peers/bin/python,
# made by ../shared/peers/setup.sh); reference data come from the sbibm wheel on PyPI
# (bench/sbi/reference.py, cached in ~/.cache/diffeo/sbibm). Results: DIR/results.jsonl and a
# table on stdout.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-$HOME/.venv-peers/bin/python}"
TASKS="two_moons gaussian_linear gaussian_mixture slcp"
BUDGETS="10000"
OBSERVATIONS="1 2 3 4 5 6 7 8 9 10"
SEQUENTIAL=0
AMORTIZED=1
OUT="bench/results/sbi"
while [ $# -gt 0 ]; do
  case "$1" in
    --tasks) TASKS="$2"; shift 2 ;;
    --budgets) BUDGETS="$2"; shift 2 ;;
    --observations) OBSERVATIONS="$2"; shift 2 ;;
    --sequential) SEQUENTIAL=1; shift ;;
    --sequential-only) SEQUENTIAL=1; AMORTIZED=0; shift ;;
    --out) OUT="$2"; shift 2 ;;
    *) echo "unknown argument $1" >&2; exit 2 ;;
  esac
done
REF="$HOME/.cache/diffeo/sbibm"
[ -f "$REF/slcp/obs10/reference.csv" ] || "$PYTHON" bench/sbi/reference.py "$REF"
# The dev profile optimizes every crate (see Cargo.toml); $DIFFEO overrides the binary.
if [ -z "${DIFFEO:-}" ]; then
  cargo build -q -p diffeo-cli
  DIFFEO="${CARGO_TARGET_DIR:-$PWD/target}/debug/diffeo"
fi
mkdir -p "$OUT"
RESULTS="$OUT/results.jsonl"
dims() { case "$1" in two_moons|gaussian_mixture) echo "2 2" ;; gaussian_linear) echo "10 10" ;; slcp) echo "5 8" ;; esac; }
for task in $TASKS; do
  read -r D K < <(dims "$task")
  prior=$("$PYTHON" bench/sbi/tasks.py prior "$task")
  theta_cols="0-$((D - 1))"; x_cols="$D-$((D + K - 1))"
  for budget in $BUDGETS; do
    dir="$OUT/$task/$budget"; mkdir -p "$dir"
    if [ "$AMORTIZED" = 1 ]; then
      "$PYTHON" bench/sbi/tasks.py sims "$task" "$budget" --seed 0 > "$dir/sims.csv"
      start=$(date +%s.%N)
      "$DIFFEO" npe --data "$dir/sims.csv" --theta-cols "$theta_cols" --x-cols "$x_cols" --prior "$prior" --seed 0 --out "$dir/amortized.dfo" --quiet
      train_s=$(echo "$(date +%s.%N) - $start" | bc)
      # Calibration on 200 fresh pairs.
      "$PYTHON" bench/sbi/tasks.py sims "$task" 200 --seed 99 > "$dir/held-out.csv"
      mkdir -p "$dir/sbc"
      sbc=$("$DIFFEO" sbc --model "$dir/amortized.dfo" --data "$dir/held-out.csv" --theta-cols "$theta_cols" --x-cols "$x_cols" --plots "$dir/sbc" --json)
      echo "{\"task\": \"$task\", \"mode\": \"sbc\", \"simulations\": $budget, \"sbc\": $sbc}" >> "$RESULTS"
    fi
    for k in $OBSERVATIONS; do
      obs="$REF/$task/obs$k"
      if [ "$AMORTIZED" = 1 ]; then
        acc=$("$DIFFEO" posterior --model "$dir/amortized.dfo" --observation "$obs/observation.csv" -n 10000 --seed "$k" --out "$dir/amortized-obs$k.csv" --json | "$PYTHON" -c "import json,sys; print(json.load(sys.stdin)['acceptance'])")
        c=$("$PYTHON" bench/sbi/c2st.py "$obs/reference.csv" "$dir/amortized-obs$k.csv")
        echo "{\"task\": \"$task\", \"mode\": \"amortized\", \"simulations\": $budget, \"observation\": $k, \"c2st\": $c, \"acceptance\": $acc, \"train_seconds\": $train_s}" | tee -a "$RESULTS"
      fi
      if [ "$SEQUENTIAL" = 1 ]; then
        start=$(date +%s.%N)
        rm -f "$dir/seq-obs$k.sims.csv"
        "$DIFFEO" npe --simulator "$PYTHON $PWD/bench/sbi/tasks.py simulate $task --seed $k" --prior "$prior" --observation "$obs/observation.csv" \
          --rounds 10 --simulations "$budget" --seed 0 --simulations-out "$dir/seq-obs$k.sims.csv" --out "$dir/seq-obs$k.dfo" --quiet
        seq_s=$(echo "$(date +%s.%N) - $start" | bc)
        "$DIFFEO" posterior --model "$dir/seq-obs$k.dfo" -n 10000 --seed "$k" --out "$dir/seq-obs$k.csv" > /dev/null
        c=$("$PYTHON" bench/sbi/c2st.py "$obs/reference.csv" "$dir/seq-obs$k.csv")
        echo "{\"task\": \"$task\", \"mode\": \"sequential\", \"simulations\": $budget, \"observation\": $k, \"c2st\": $c, \"train_seconds\": $seq_s}" | tee -a "$RESULTS"
      fi
    done
  done
done
"$PYTHON" - "$RESULTS" <<'PY'
import json, sys, collections
rows = [json.loads(l) for l in open(sys.argv[1])]
groups = collections.defaultdict(list)
for r in rows:
    if r["mode"] == "sbc":
        s = r["sbc"]
        ks = ", ".join(f"{p['ks_p_value']:.2f}" for p in s["parameters"])
        cov = {round(l, 2): c for l, c in zip(s["levels"], s["coverage"])}
        print(f"SBC {r['task']} {r['simulations']}: KS p-values {ks}; HPD coverage at 0.5 / 0.9: {cov[0.5]:.3f} / {cov[0.9]:.3f}")
        continue
    groups[(r["task"], r["mode"], r["simulations"])].append(r["c2st"])
print("| task | mode | simulations | observations | mean C2ST |")
print("|---|---|---|---|---|")
for (t, m, s), v in sorted(groups.items()):
    print(f"| {t} | {m} | {s} | {len(v)} | {sum(v) / len(v):.3f} |")
PY
