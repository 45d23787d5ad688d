"""normflows' residual flow timed beside `diffeo fit --flow residual` (bench/residual/speed.sh):
K blocks of ActNorm and `Residual(LipschitzMLP([D, 128, 128, D], 0.97))` — Residual Flows'
roulette (2 exact terms, geometric ½) with Neumann gradients, 5 power iterations per step —
a fixed standard-normal base, Adam 1e-3, the same batch, steps and data
(`{train,test}.npy` of the peers' make_data.py). Prints one JSON line: steps/s, test LL.

    python normflows_residual.py --data DIR/moons --steps 300 [--blocks 8] [--batch 512] [--threads 2]
"""

import argparse
import json
import time

import numpy as np
import normflows as nf
import torch


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--data", required=True)
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--blocks", type=int, default=8)
    p.add_argument("--batch", type=int, default=512)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    train, test = (np.load(f"{a.data}/{s}.npy").astype(np.float32) for s in ("train", "test"))
    # Standardized as diffeo does inside its models; log-likelihoods are reported in data units.
    mean, std = train.mean(0), train.std(0)
    log_jac = -np.log(std).sum()
    train_t, test_t = torch.tensor((train - mean) / std), torch.tensor((test - mean) / std)
    d = train.shape[1]
    flows = []
    for _ in range(a.blocks):
        net = nf.nets.LipschitzMLP([d, 128, 128, d], lipschitz_const=0.97, max_lipschitz_iter=5, init_zeros=True)
        flows += [nf.flows.Residual(net, reduce_memory=True, n_exact_terms=2, geom_p=0.5), nf.flows.ActNorm(d)]
    model = nf.NormalizingFlow(q0=nf.distributions.DiagGaussian(d, trainable=False), flows=flows)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    rng = np.random.default_rng(a.seed)
    t0 = time.perf_counter()
    for _ in range(a.steps):
        x = train_t[rng.integers(0, len(train_t), a.batch)]
        loss = model.forward_kld(x)
        opt.zero_grad()
        loss.backward()
        opt.step()
        nf.utils.update_lipschitz(model, 5)
    train_s = time.perf_counter() - t0
    nf.utils.update_lipschitz(model, 200)
    model.eval()
    t = time.perf_counter()
    lls = []
    for c in test_t.split(2000):
        lls.append(model.log_prob(c).detach().numpy())
    logprob_s = time.perf_counter() - t
    ll = np.concatenate(lls) + log_jac
    print(json.dumps({
        "lib": "normflows", "model": "residual", "data": a.data.rstrip("/").split("/")[-1], "blocks": a.blocks,
        "steps": a.steps, "steps_per_s": round(a.steps / train_s, 3), "logprob_per_s": round(len(test_t) / logprob_s, 1),
        "test_ll": float(np.mean(ll)), "test_ll_stderr": float(np.std(ll) / np.sqrt(len(ll))),
    }))


if __name__ == "__main__":
    main()
