"""Markdown rows of residual-flow runs (bench/residual/speed.sh lines: diffeo, then normflows, per
data set): diffeo beside normflows, ratio diffeo ÷ normflows.

    python summary.py RAW.jsonl [--section]   (--section: with a heading and the table header)
"""

import json
import sys


def rows(path):
    lines = [json.loads(l) for l in open(path) if l.strip().startswith("{")]
    d = [r for r in lines if r["lib"] == "diffeo"]
    n = [r for r in lines if r["lib"] == "normflows"]
    return [f"| residual | {a['data']} | {a['steps']} | {a['steps_per_s']:.1f} | {a['steps_per_s'] / b['steps_per_s']:.2f}× | "
            f"{logprob(a, b)} | {a['eval']['log_likelihood']:.3f} / {b['test_ll']:.3f} |" for a, b in zip(d, n) if a["data"] == b["data"]]


def logprob(a, b):
    """diffeo's log_prob rate (test rows over the whole `eval` command) ÷ normflows'; — where not timed."""
    if "eval_s" not in a or "logprob_per_s" not in b:
        return "—"
    return f"{a['eval']['n'] / a['eval_s'] / b['logprob_per_s']:.2f}×"


if __name__ == "__main__":
    if "--section" in sys.argv:
        print(f"\n## Residual flows beside normflows (`bench/residual/speed.sh`; raw lines: `{sys.argv[1]}`)\n")
        print("8 blocks of ActNorm and a 128×2 Lipschitz MLP (k = 0.97), roulette with 2 exact terms and Neumann "
              "gradients, 5 power iterations per step, Adam 1e−3, batch 512; ratio diffeo ÷ normflows. See docs/residual.md.\n")
        print("| model | data | steps | diffeo steps/s | train ÷ normflows | log_prob ÷ normflows | test LL diffeo / normflows |")
        print("|---|---|---|---|---|---|---|")
    print("\n".join(rows(sys.argv[1])))
