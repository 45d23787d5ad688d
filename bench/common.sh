# Shared by the bench scripts; sourced from the repository root (`cd "$(dirname "$0")/../.."`).
# Sets $bin (DIFFEO_BIN or the release build, built if missing) and $py (PEERS_PY, the peers'
# virtual environment, or python3).
bin="${DIFFEO_BIN:-target/release/diffeo}"
[ -x "$bin" ] || cargo build -q --release -p diffeo-cli
py="${PEERS_PY:-$HOME/.venv-peers/bin/python}"
command -v "$py" >/dev/null || py=python3

# test_ll MODEL DATA: the model's mean test log-likelihood on DATA.
test_ll() { "$bin" eval --model "$1" --data "$2" --json | sed 's/.*"log_likelihood":\([-0-9.e]*\).*/\1/'; }

# banana_data DIR: the 6-D banana's train/val/test CSVs in DIR (bench/cnf/banana.py), once.
banana_data() { [ -f "$1/test.csv" ] || "$py" bench/cnf/banana.py "$1"; }

# fit_and_eval DIR NAME FLAGS...: fits DIR/train.csv (validation DIR/val.csv) with FLAGS into
# DIR/NAME.dfo and prints one line: the test evaluation (JSON), the fit's seconds, the flags.
fit_and_eval() {
  local dir=$1 name=$2; shift 2
  local s; s=$(date +%s.%N)
  "$bin" fit --data "$dir/train.csv" --val "$dir/val.csv" "$@" --out "$dir/$name.dfo" -q
  local t; t=$(echo "$(date +%s.%N) - $s" | bc)
  echo "$name: $("$bin" eval --model "$dir/$name.dfo" --data "$dir/test.csv" --json)  fit ${t}s  ($*)"
}
