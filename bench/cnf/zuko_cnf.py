"""zuko's CNF timed the way `diffeo bench --config cnf-DATA` times diffeo's: the same data
(`{train,val,test}.npy` of the peers' make_data.py), vector field (64×2 ELU on z and 3 time
frequencies), exact trace, Dormand–Prince with atol 1e-6 and rtol 1e-5, Adam 1e-3, batch, steps
and seed; one JSON line with the same keys (and NFE, counted as calls of the field).

    python zuko_cnf.py --data DIR/moons --steps 200 [--batch 512] [--seed 0] [--threads 2] [--n-sample 10000]
"""

import argparse
import json
import time

import numpy as np
import torch
import zuko


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--data", required=True)
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--batch", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--n-sample", type=int, default=10000)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    train, val, test = (torch.tensor(np.load(f"{a.data}/{s}.npy"), dtype=torch.float32) for s in ("train", "val", "test"))
    d = train.shape[1]
    batch = a.batch or (512 if d <= 2 else 256)
    flow = zuko.flows.CNF(d, hidden_features=(64, 64))
    calls = [0]
    flow.transform.ode.register_forward_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    opt = torch.optim.Adam(flow.parameters(), lr=1e-3)
    rng = np.random.default_rng(a.seed)
    order, cursor = rng.permutation(len(train)), 0
    losses = []
    t0 = time.perf_counter()
    first = None
    for _ in range(a.steps):
        if cursor + batch > len(train):
            order, cursor = rng.permutation(len(train)), 0
        x = train[order[cursor:cursor + batch]]
        cursor += batch
        loss = -flow().log_prob(x).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
        if first is None:
            first = time.perf_counter() - t0
    train_s = time.perf_counter() - t0
    flow.eval()

    def log_probs(x):
        with torch.no_grad():
            return torch.cat([flow().log_prob(c) for c in x.split(8192)]).numpy()

    val_ll, test_ll = log_probs(val), log_probs(test)
    log_probs(test)
    calls[0] = 0
    reps, total = 0, 0.0
    while reps < 3 or (total < 1.0 and reps < 200):
        t = time.perf_counter()
        log_probs(test)
        total += time.perf_counter() - t
        reps += 1
    logprob_nfe = calls[0] // reps
    logprob_per_s = len(test) * reps / total
    with torch.no_grad():
        flow().sample((min(a.n_sample, 1000),))
        reps, stotal = 0, 0.0
        while reps < 2 or (stotal < 1.0 and reps < 20):
            t = time.perf_counter()
            s = flow().sample((a.n_sample,))
            stotal += time.perf_counter() - t
            reps += 1
            if stotal > 5.0:
                break
    last = losses[-100:]
    print(json.dumps({
        "lib": "zuko", "model": "cnf", "data": a.data.rstrip("/").split("/")[-1], "dim": d,
        "steps": a.steps, "batch": batch, "seed": a.seed, "lr": 1e-3, "transforms": 1, "hidden": 64,
        "versions": {"zuko": zuko.__version__, "torch": torch.__version__},
        "n_params": sum(p.numel() for p in flow.parameters()),
        "train_s": round(train_s, 3), "first_step_s": round(first or 0.0, 4),
        "steps_per_s": round(a.steps / train_s, 2),
        "train_loss_last100": round(float(np.mean(last)), 4),
        "test_ll": round(float(np.mean(test_ll)), 4), "val_ll": round(float(np.mean(val_ll)), 4),
        "logprob_per_s": round(logprob_per_s, 1), "logprob_reps": reps, "logprob_nfe": logprob_nfe,
        "sample_n": a.n_sample, "sample_per_s": round(a.n_sample * reps / stotal, 1),
        "sample_finite_frac": float(torch.isfinite(s).all(dim=1).float().mean()),
        "ode": {"solver": "dopri5 (zuko)", "atol": 1e-6, "rtol": 1e-5, "trace": "exact", "hidden": [64, 64]},
        "threads": a.threads,
    }))


if __name__ == "__main__":
    main()
