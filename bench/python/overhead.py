"""The Python package's call overhead and speed, beside the Rust library and zuko (one process
per measurement, interleaved rounds; bench/python.sh runs it and prints the table).

  overhead.py --what {diffeo-py,zuko} --model M.dfo --rows ROWS.npy --sizes 1 1000 100000
  overhead.py --what {diffeo-py,zuko}-fit --train TRAIN.npy --test TEST.npy --steps 2000 --batch 512

One JSON line per measurement: log_prob seconds per call and rows/s, or fit seconds, steps/s
and the test log-likelihood.
"""

import argparse
import json
import time

import numpy as np


def timed(call, blocks=5, min_seconds=0.3, min_calls=3):
    """Seconds per call: the fastest of `blocks` blocks of repeated calls (each at least
    `min_seconds` and `min_calls`), after one warm-up call; the fastest block is the one least
    disturbed by the rest of the machine."""
    call()
    best = float("inf")
    for _ in range(blocks):
        start, calls = time.perf_counter(), 0
        while calls < min_calls or time.perf_counter() - start < min_seconds:
            call()
            calls += 1
        best = min(best, (time.perf_counter() - start) / calls)
    return best


def zuko_maf(dim):
    import torch
    import zuko

    torch.set_num_threads(2)
    torch.manual_seed(0)
    return zuko.flows.MAF(dim, transforms=5, hidden_features=(128, 128))


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--what", required=True, choices=["diffeo-py", "zuko", "diffeo-py-fit", "zuko-fit"])
    p.add_argument("--model")
    p.add_argument("--rows")
    p.add_argument("--sizes", type=int, nargs="*", default=[1, 1000, 100000])
    p.add_argument("--train")
    p.add_argument("--test")
    p.add_argument("--steps", type=int, default=2000)
    p.add_argument("--batch", type=int, default=512)
    p.add_argument("--out")
    a = p.parse_args()

    if a.what == "diffeo-py":
        import diffeo

        flow = diffeo.Flow.load(a.model)
        rows = np.load(a.rows)
        for n in a.sizes:
            x = rows[:n]
            s = timed(lambda: flow.log_prob(x))
            print(json.dumps({"lib": "diffeo-py", "rows": n, "seconds_per_call": s, "rows_per_s": n / s}))
    elif a.what == "zuko":
        import torch

        flow = zuko_maf(2)
        rows = torch.as_tensor(np.load(a.rows), dtype=torch.float32)
        with torch.no_grad():
            for n in a.sizes:
                x = rows[:n]
                s = timed(lambda: flow().log_prob(x))
                print(json.dumps({"lib": "zuko", "rows": n, "seconds_per_call": s, "rows_per_s": n / s}))
    elif a.what == "diffeo-py-fit":
        import diffeo

        train, test = np.load(a.train), np.load(a.test)
        flow = diffeo.Flow.maf(train.shape[1])
        start = time.perf_counter()
        report = flow.fit(train, steps=a.steps, batch=a.batch, schedule="constant", progress=False)
        wall = time.perf_counter() - start
        ll = float(np.mean(flow.log_prob(test)))
        if a.out:
            flow.save(a.out)
        print(json.dumps({"lib": "diffeo-py", "fit_seconds": report.seconds, "wall_seconds": wall, "steps_per_s": a.steps / report.seconds, "test_ll": ll}))
    else:
        import torch

        train = torch.as_tensor(np.load(a.train), dtype=torch.float32)
        test = torch.as_tensor(np.load(a.test), dtype=torch.float32)
        flow = zuko_maf(train.shape[1])
        opt = torch.optim.Adam(flow.parameters(), lr=1e-3)
        rng = np.random.default_rng(0)
        start = time.perf_counter()
        for _ in range(a.steps):
            idx = torch.as_tensor(rng.integers(0, len(train), a.batch))
            loss = -flow().log_prob(train[idx]).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
        seconds = time.perf_counter() - start
        with torch.no_grad():
            ll = float(flow().log_prob(test).mean())
        print(json.dumps({"lib": "zuko", "fit_seconds": seconds, "wall_seconds": seconds, "steps_per_s": a.steps / seconds, "test_ll": ll}))


if __name__ == "__main__":
    main()
