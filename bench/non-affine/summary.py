"""Markdown rows of bench/non-affine/speed.sh: each diffeo run beside the peer run that follows it
(naf | zuko NAF, umnn | zuko UNAF, bnaf | FlowJAX BNAF), ratios diffeo ÷ peer.

    python summary.py RAW.jsonl [--section]   (--section: with a heading and the table header)
"""

import json
import sys

PEER = {"naf": "zuko NAF", "umnn": "zuko UNAF", "bnaf": "FlowJAX BNAF"}


def rows(path):
    lines = [json.loads(l) for l in open(path) if l.strip().startswith("{")]
    out = []
    for a, b in zip(lines, lines[1:]):
        if a["lib"] != "diffeo" or b["lib"] == "diffeo" or a["data"] != b["data"]:
            continue
        lp = a.get("eval_rows", a["eval"]["n"]) / a["eval_s"] / b["logprob_per_s"]
        out.append(f"| {a['model']} / {PEER[a['model']]} | {a['data']} | {a['steps']} | {a['steps_per_s']:.2f} / {b['steps_per_s']:.2f} | "
                   f"{a['steps_per_s'] / b['steps_per_s']:.2f}× | {lp:.2f}× | {a['eval']['log_likelihood']:.3f} / {b['test_ll']:.3f} |")
    return out


if __name__ == "__main__":
    if "--section" in sys.argv:
        print(f"\n## Non-affine autoregressive flows beside zuko and FlowJAX (`bench/non-affine/speed.sh`; raw lines: `{sys.argv[1]}`)\n")
        print("naf and umnn beside zuko's NAF and UNAF with the same MADE (5 transforms, 128×2, Adam 1e−3); bnaf beside "
              "FlowJAX's BNAF (1 layer, block dim 8, depth 1, Adam 1e−2); batch 512, the same steps, a constant learning "
              "rate on both sides (diffeo `--schedule constant`, as the peers' loops). Each library's own transformer "
              "(docs/non-affine.md). diffeo's log_prob rate: the whole `diffeo eval` command on the test set tiled to "
              "≥ 100,000 rows. Ratios diffeo ÷ peer.\n")
        print("| model / peer | data | steps | steps/s diffeo / peer | train ÷ peer | log_prob ÷ peer | test LL diffeo / peer |")
        print("|---|---|---|---|---|---|---|")
    print("\n".join(rows(sys.argv[1])))
