"""The best C2ST any posterior estimator can expect on gaussian_linear from a given number of
simulations: the posterior of this task is N(b + W x, Σ) with b, W, Σ unknown to the estimator,
and least squares of θ on x (the maximum-likelihood, asymptotically efficient estimate of that
model class) is fitted to fresh simulations, sampled at observations 1–3, and read by the same
C2ST as the flows (early-stopping classifier). Exact posterior samples are the control.

    python linear_oracle.py SIMULATIONS [SEED ...]

Expected KL(exact ‖ fitted) of the efficient estimate is (number of parameters)/(2n) =
(D·(D+1) + D(D+1)/2)/(2n) = 165/(2n) for D = 10: 0.008 nats at n = 10,000."""

import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from c2st import c2st  # noqa: E402

REF = os.path.expanduser("~/.cache/diffeo/sbibm/gaussian_linear")


def run(n_sims, seed, obs):
    xo = np.loadtxt(f"{REF}/obs{obs}/observation.csv", delimiter=",")
    ref = np.loadtxt(f"{REF}/obs{obs}/reference.csv", delimiter=",", skiprows=1)[:10000]
    rng = np.random.default_rng(seed * 1000 + 100 + obs)
    exact = xo / 2 + np.sqrt(0.05) * rng.normal(size=(10000, 10))
    th = rng.normal(0, np.sqrt(0.1), (n_sims, 10))
    x = th + rng.normal(0, np.sqrt(0.1), th.shape)
    a = np.hstack([np.ones((n_sims, 1)), x])
    coef, *_ = np.linalg.lstsq(a, th, rcond=None)
    res = th - a @ coef
    cov = res.T @ res / (n_sims - 11)
    mean = np.concatenate([[1.0], xo]) @ coef
    fitted = mean + rng.normal(size=(10000, 10)) @ np.linalg.cholesky(cov).T
    s0, d, si = 0.05 * np.eye(10), mean - xo / 2, np.linalg.inv(cov)
    kl = 0.5 * (np.trace(si @ s0) + d @ si @ d - 10 + np.log(np.linalg.det(cov) / np.linalg.det(s0)))
    print(f"n={n_sims} seed={seed} obs{obs} KL={kl:.5f} exact={c2st(ref, exact, early_stopping=True):.4f} "
          f"least-squares={c2st(ref, fitted, early_stopping=True):.4f}", flush=True)


if __name__ == "__main__":
    n = int(sys.argv[1])
    for seed in [int(s) for s in sys.argv[2:]] or [0]:
        for obs in (1, 2, 3):
            run(n, seed, obs)
