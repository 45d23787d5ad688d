"""Rows of bench/images/*.sh results: diffeo's Glow beside normflows' Glow, as ratios (means over
repeats).

  python bench/images/summary.py RESULTS.jsonl
"""
import json
import sys
from collections import defaultdict


def main():
    runs = defaultdict(list)
    for line in open(sys.argv[1]):
        r = json.loads(line)
        runs[(r["levels"], r["steps_per_level"], r["hidden"], r["batch"], r["lib"])].append(r)
    mean = lambda rows, key: sum(r[key] for r in rows) / len(rows)
    bpd = lambda r: r["eval"]["bits_per_dim"] if r["lib"] == "diffeo" else r["test_bpd"]
    print("| L×K, hidden, batch | steps/s diffeo · normflows · ratio | log_prob images/s · ratio | sampling images/s · ratio | test bits/dim after the steps | parameters |")
    print("|---|---|---|---|---|---|")
    for (l, k, h, b, lib) in sorted(runs):
        if lib != "diffeo" or (l, k, h, b, "normflows") not in runs:
            continue
        d, n = runs[(l, k, h, b, "diffeo")], runs[(l, k, h, b, "normflows")]
        cells = []
        for key in ["steps_per_s", "logprob_per_s", "sample_per_s"]:
            x, y = mean(d, key), mean(n, key)
            cells.append(f"{x:.3g} · {y:.3g} · **{x / y:.2f}×**")
        print(f"| {l}×{k}, {h}, {b} | {' | '.join(cells)} | {sum(map(bpd, d)) / len(d):.3f} · {sum(map(bpd, n)) / len(n):.3f} | {d[0]['n_params']:,} · {n[0]['n_params']:,} |")


if __name__ == "__main__":
    main()
