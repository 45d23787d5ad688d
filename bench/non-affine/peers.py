"""The peers' non-affine autoregressive flows timed beside `diffeo fit --flow naf|umnn|bnaf`
(bench/non-affine/speed.sh): zuko's `NAF` (MADE → 16 signals → a positive-weight monotonic MLP
17→64→64→1 per feature) and `UNAF` (MADE → 16 signals and a constant → the integral of an ELU MLP
17→64→64→1 by 32-node Gauss–Legendre quadrature), with the same MADE (transforms, hidden widths)
as diffeo; FlowJAX's `block_neural_autoregressive_flow` (BNAF: 1 layer, block dim 8, depth 1,
leaky-tanh, the sizes of `diffeo --flow bnaf`; its first step, which compiles, is not timed). Data standardized as diffeo does inside its models;
log-likelihoods in data units. Adam at --lr, uniform minibatches of --batch, --steps steps.
Prints one JSON line: steps/s, log-densities/s on the test set, test LL.

    python peers.py --lib zuko --model naf --data DIR/moons --steps 500 [--transforms 5] [--hidden 128]
    python peers.py --lib flowjax --model bnaf --data DIR/moons --steps 500 --lr 1e-2
"""

import argparse
import json
import time

import numpy as np


def load(data):
    train, test = (np.load(f"{data}/{s}.npy").astype(np.float32) for s in ("train", "test"))
    mean, std = train.mean(0), train.std(0)
    return (train - mean) / std, (test - mean) / std, float(-np.log(std).sum())


def run_zuko(a, train, test):
    import torch
    import zuko

    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    d = train.shape[1]
    cls = {"naf": zuko.flows.NAF, "unaf": zuko.flows.UNAF}[a.model]
    flow = cls(d, transforms=a.transforms, hidden_features=[a.hidden] * 2)
    opt = torch.optim.Adam(flow.parameters(), lr=a.lr)
    train_t, test_t = torch.tensor(train), torch.tensor(test)
    rng = np.random.default_rng(a.seed)
    t0 = time.perf_counter()
    for _ in range(a.steps):
        x = train_t[rng.integers(0, len(train_t), a.batch)]
        loss = -flow().log_prob(x).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    train_s = time.perf_counter() - t0
    flow.eval()
    with torch.no_grad():
        t = time.perf_counter()
        ll = np.concatenate([flow().log_prob(c).numpy() for c in test_t.split(10000)])
        logprob_s = time.perf_counter() - t
    n_params = sum(p.numel() for p in flow.parameters())
    return train_s, logprob_s, ll.astype(np.float64), n_params


def run_flowjax(a, train, test):
    import equinox as eqx
    import jax
    import jax.numpy as jnp
    import optax
    import paramax
    from flowjax.distributions import StandardNormal
    from flowjax.flows import block_neural_autoregressive_flow
    from flowjax.train.losses import MaximumLikelihoodLoss
    from flowjax.train.train_utils import step

    d = train.shape[1]
    dist = block_neural_autoregressive_flow(jax.random.key(a.seed), base_dist=StandardNormal((d,)), nn_depth=1,
                                            nn_block_dim=8, flow_layers=1, invert=True)
    params, static = eqx.partition(dist, eqx.is_inexact_array, is_leaf=lambda leaf: isinstance(leaf, paramax.NonTrainable))
    optimizer = optax.adam(a.lr)
    opt_state = optimizer.init(params)
    loss_fn = MaximumLikelihoodLoss()
    rng = np.random.default_rng(a.seed)
    # The first step compiles (excluded, as diffeo's timing excludes its start-up): the rate is
    # over the other steps, scaled to --steps.
    x = train[rng.integers(0, len(train), a.batch)]
    params, opt_state, loss = step(params, static, x, optimizer=optimizer, opt_state=opt_state, loss_fn=loss_fn)
    jax.block_until_ready((params, loss))
    t0 = time.perf_counter()
    for _ in range(a.steps - 1):
        x = train[rng.integers(0, len(train), a.batch)]
        params, opt_state, loss = step(params, static, x, optimizer=optimizer, opt_state=opt_state, loss_fn=loss_fn)
    jax.block_until_ready((params, loss))
    train_s = (time.perf_counter() - t0) * a.steps / max(a.steps - 1, 1)
    dist = eqx.combine(params, static)
    lp = eqx.filter_jit(lambda m, x: paramax.unwrap(m).log_prob(x))
    x = jnp.asarray(test)
    jax.block_until_ready(lp(dist, x))  # compile for this shape
    t = time.perf_counter()
    ll = np.asarray(jax.block_until_ready(lp(dist, x)))
    logprob_s = time.perf_counter() - t
    n_params = sum(int(np.prod(p.shape)) for p in jax.tree_util.tree_leaves(params))
    return train_s, logprob_s, ll.astype(np.float64), n_params


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--lib", required=True, choices=["zuko", "flowjax"])
    p.add_argument("--model", required=True, choices=["naf", "unaf", "bnaf"])
    p.add_argument("--data", required=True)
    p.add_argument("--steps", type=int, default=500)
    p.add_argument("--batch", type=int, default=512)
    p.add_argument("--transforms", type=int, default=5)
    p.add_argument("--hidden", type=int, default=128)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    a = p.parse_args()
    train, test, log_jac = load(a.data)
    run = run_zuko if a.lib == "zuko" else run_flowjax
    train_s, logprob_s, ll, n_params = run(a, train, test)
    ll = ll + log_jac
    print(json.dumps({
        "lib": a.lib, "model": a.model, "data": a.data.rstrip("/").split("/")[-1], "steps": a.steps,
        "batch": a.batch, "n_params": n_params, "steps_per_s": round(a.steps / train_s, 3),
        "logprob_per_s": round(len(test) / logprob_s, 1), "test_ll": float(np.mean(ll)),
        "test_ll_stderr": float(np.std(ll) / np.sqrt(len(ll))),
    }))


if __name__ == "__main__":
    main()
