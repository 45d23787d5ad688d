"""normflows' Glow on 8-bit images (IDX), beside `diffeo fit --flow glow`.

The architecture of normflows' Glow example, unconditional: L levels of K GlowBlocks (ActNorm, LU 1x1
convolution, affine coupling with a sigmoid scale and a 3x3/1x1/3x3 convolutional network of
`hidden` channels, zero-initialised last layer) with a squeeze, half of the channels to a learned
diagonal Gaussian after each level (MultiscaleFlow). Data: x = (pixel + U)/256; Adam, constant rate;
torch on 2 threads, f32. Prints one JSON line: steps_per_s (after 3 warm-up steps), logprob_per_s and
sample_per_s (images per second, no gradients), test bits/dim (on --eval-n test images, or all with
--eval-n 0), n_params. With --curve-every K, also a curve: test bits/dim on the first 2,000 test
images every K steps (its time is not counted against the budget), to compare per step with
diffeo's validation curve.

  python bench/images/normflows_glow.py --train train-images-idx3-ubyte.gz --test t10k-images-idx3-ubyte.gz \
      [--steps N | --budget SECONDS] [--levels 2] [--steps-per-level 8] [--hidden 64] [--batch 64] \
      [--seed S] [--curve-every K]
"""
import argparse
import gzip
import json
import math
import sys
import time

import numpy as np
import torch
import normflows as nf


def read_idx(path):
    with (gzip.open if path.endswith(".gz") else open)(path, "rb") as f:
        b = f.read()
    rank = b[3]
    dims = [int.from_bytes(b[4 + 4 * k:8 + 4 * k], "big") for k in range(rank)]
    x = np.frombuffer(b, dtype=np.uint8, offset=4 + 4 * rank).reshape(dims)
    return x.reshape(dims[0], 1, dims[1], dims[2]) if rank == 3 else x


def glow(shape, levels, k, hidden):
    c, h, w = shape
    q0, merges, flows = [], [], []
    for i in range(levels):
        flows.append([nf.flows.GlowBlock(c * 2 ** (levels + 1 - i), hidden, split_mode="channel", scale=True) for _ in range(k)] + [nf.flows.Squeeze()])
        if i > 0:
            merges.append(nf.flows.Merge())
            latent = (c * 2 ** (levels - i), h // 2 ** (levels - i), w // 2 ** (levels - i))
        else:
            latent = (c * 2 ** (levels + 1), h // 2 ** levels, w // 2 ** levels)
        q0.append(nf.distributions.DiagGaussian(latent))
    return nf.MultiscaleFlow(q0, flows, merges, class_cond=False)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--train", required=True)
    p.add_argument("--test", required=True)
    p.add_argument("--steps", type=int, default=0)
    p.add_argument("--budget", type=float, default=0.0)
    p.add_argument("--levels", type=int, default=2)
    p.add_argument("--steps-per-level", type=int, default=8)
    p.add_argument("--hidden", type=int, default=64)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--eval-n", type=int, default=2000)
    p.add_argument("--samples", type=int, default=256)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--curve-every", type=int, default=0)
    a = p.parse_args()
    torch.set_num_threads(2)
    torch.manual_seed(a.seed)
    rng = np.random.default_rng(a.seed)
    train = torch.from_numpy(read_idx(a.train).astype(np.float32))
    test = read_idx(a.test).astype(np.float32)
    if a.eval_n > 0:
        test = test[: a.eval_n]
    test = torch.from_numpy((test + rng.random(test.shape, dtype=np.float32)) / 256.0)
    shape = tuple(train.shape[1:])
    d = int(np.prod(shape))
    model = glow(shape, a.levels, a.steps_per_level, a.hidden)
    opt = torch.optim.Adam(model.parameters(), lr=a.lr)
    n_params = sum(q.numel() for q in model.parameters())
    curve_x = test[:2000]
    curve, paused = [], 0.0

    def bits_per_dim(x):
        with torch.no_grad():
            lp = torch.cat([model.log_prob(x[i:i + 500], None) for i in range(0, len(x), 500)]).double()
        return float((-(lp - d * math.log(256)) / (d * math.log(2))).mean())

    steps, t0, t_warm = 0, time.perf_counter(), None
    while True:
        if a.steps and steps >= a.steps:
            break
        if a.budget and time.perf_counter() - t0 - paused >= a.budget:
            break
        idx = torch.from_numpy(rng.integers(0, len(train), a.batch))
        x = (train[idx] + torch.rand(a.batch, *shape)) / 256.0
        loss = -model.log_prob(x, None).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        steps += 1
        if steps == 3:
            t_warm = time.perf_counter()
        if a.curve_every and steps % a.curve_every == 0:
            tc = time.perf_counter()
            model.eval()
            curve.append([steps, round(tc - t0 - paused, 1), bits_per_dim(curve_x)])
            model.train()
            paused += time.perf_counter() - tc
            print(json.dumps({"step": curve[-1][0], "seconds": curve[-1][1], "test_bpd_2000": curve[-1][2]}), file=sys.stderr, flush=True)
    t_train = time.perf_counter() - t0 - paused
    steady = (steps - 3) / (time.perf_counter() - t_warm - paused) if t_warm and steps > 3 else float("nan")
    model.eval()
    with torch.no_grad():
        t = time.perf_counter()
        lp = torch.cat([model.log_prob(test[i:i + 500], None) for i in range(0, len(test), 500)]).double().numpy()
        logprob_per_s = len(test) / (time.perf_counter() - t)
        t = time.perf_counter()
        done = 0
        while done < a.samples:
            m = min(64, a.samples - done)
            model.sample(m)
            done += m
        sample_per_s = a.samples / (time.perf_counter() - t)
    finite = lp[np.isfinite(lp)]
    bpd = -(finite - d * math.log(256)) / (d * math.log(2))
    print(json.dumps({
        "lib": "normflows", "model": "glow", "levels": a.levels, "steps_per_level": a.steps_per_level, "hidden": a.hidden,
        "batch": a.batch, "steps": steps, "train_s": t_train, "steps_per_s": steps / t_train, "steady_steps_per_s": steady,
        "logprob_per_s": logprob_per_s, "sample_per_s": sample_per_s, "test_bpd": float(bpd.mean()),
        "test_bpd_stderr": float(bpd.std() / math.sqrt(len(bpd))), "test_n": int(len(lp)), "nonfinite": int(len(lp) - len(finite)),
        "n_params": n_params, "seed": a.seed, **({"curve": curve} if curve else {}),
    }))


if __name__ == "__main__":
    main()
