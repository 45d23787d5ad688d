"""Markdown rows of CNF runs (`diffeo bench --config cnf-DATA` and bench/cnf/zuko_cnf.py lines
in one raw file): diffeo beside zuko, ratios diffeo ÷ zuko.

    python summary.py RAW.jsonl [--section]   (--section: with a heading and the table header)
"""

import json
import sys


def rows(path):
    lines = [json.loads(l) for l in open(path) if l.strip().startswith("{")]
    out = []
    gradient = lambda r: (r.get("ode") or {}).get("gradient", "backprop")
    for c in sorted({r["data"] for r in lines}):
        z = [r for r in lines if r["data"] == c and r["lib"] == "zuko"]
        for g in ("backprop", "adjoint"):
            d = [r for r in lines if r["data"] == c and r["lib"] == "diffeo" and gradient(r) == g]
            model = "cnf" if g == "backprop" else "cnf, adjoint"
            out.extend(row(model, c, a, b) for a, b in zip(d, z))
    return out


def row(model, c, a, b):
    """One table row: diffeo's run `a` beside zuko's `b` (zuko trains by its adjoint)."""
    return (f"| {model} | {c} | {a['steps']} | {a['steps_per_s']} | {a['steps_per_s'] / b['steps_per_s']:.2f}× | "
            f"{a['logprob_per_s']:,.0f} | {a['logprob_per_s'] / b['logprob_per_s']:.2f}× | {a['sample_per_s']:,.0f} | "
            f"{a['sample_per_s'] / b['sample_per_s']:.2f}× | {a['logprob_nfe']} / {b['logprob_nfe']} | "
            f"{a['test_ll']:.3f} / {b['test_ll']:.3f} |")


if __name__ == "__main__":
    if "--section" in sys.argv:
        print(f"\n## Continuous-time flows beside zuko's CNF (`bench/cnf.sh`; raw lines: `{sys.argv[1]}`)\n")
        print("Same data, 64×2 ELU field with 3 time frequencies, exact trace, Dormand–Prince atol 1e−6 / rtol 1e−5, "
              "Adam 1e−3, batch 512; ratios diffeo ÷ zuko. See docs/cnf.md.\n")
        print("| model | data | steps | diffeo steps/s | ÷ zuko | diffeo log_prob/s | ÷ zuko | diffeo sample/s | ÷ zuko | "
              "NFE per test pass diffeo / zuko | test LL diffeo / zuko |")
        print("|---|---|---|---|---|---|---|---|---|---|---|")
    print("\n".join(rows(sys.argv[1])))
