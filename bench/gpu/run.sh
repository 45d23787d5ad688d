#!/bin/bash
# GPU benchmark: `diffeo bench --device cuda` for maf and nsf on POWER and gauss16 at batch 512
# and 8192, one JSON line per run appended to OUT.jsonl.
#
#   bench/gpu/run.sh DIFFEO_BIN DATA_DIR OUT.jsonl [STEPS_512] [STEPS_8192]
#
# DIFFEO_BIN: a `diffeo` built with `cargo build --release -p diffeo-cli --features cuda` (see
# docs/benchmarks-gpu.md for building it offline). DATA_DIR: the peers' make_data.py folders
# (`power/`, `gauss16/`). Each run is capped at 150 s.
set -u
bin=$1 data=$2 out=$3 s512=${4:-400} s8k=${5:-300}
# cudarc looks for libcuda.so; containers often carry only libcuda.so.1.
if ! ldconfig -p | grep -q "libcuda.so "; then
  real=$(ldconfig -p | awk '/libcuda.so.1 /{print $NF; exit}')
  if [ -n "$real" ]; then
    libs=$(mktemp -d) && ln -sf "$real" "$libs/libcuda.so" && export LD_LIBRARY_PATH="$libs:${LD_LIBRARY_PATH:-}"
  fi
fi
for spec in "maf-power 512 $s512" "nsf-power 512 $s512" "maf-gauss16 512 $s512" "nsf-gauss16 512 $s512" \
            "maf-power 8192 $s8k" "nsf-power 8192 $s8k" "maf-gauss16 8192 $s8k" "nsf-gauss16 8192 $s8k"; do
  set -- $spec
  timeout 150 "$bin" bench --config "$1" --data-dir "$data" --device cuda --batch "$2" --steps "$3" \
    --n-sample 2000 --out "$out" > /dev/null
  echo "$spec: exit $?" >&2
done
