"""The four sbibm tasks (Lueckmann et al. 2021): priors, simulators, exact likelihoods and
reference posterior samplers. Simulators read θ rows as CSV on stdin and write x rows on stdout:

    python tasks.py simulate TASK [--seed S] < theta.csv > x.csv

Only numpy; every random draw comes from a generator seeded by --seed and the θ rows' hash, so
a batch re-run gives the same x."""

import hashlib
import sys

import numpy as np

PRIORS = {
    "two_moons": "uniform:-1:1x2",
    "gaussian_linear": "normal:0:0.31622776601683794x10",
    "gaussian_mixture": "uniform:-10:10x2",
    "slcp": "uniform:-3:3x5",
}
DIMS = {"two_moons": (2, 2), "gaussian_linear": (10, 10), "gaussian_mixture": (2, 2), "slcp": (5, 8)}


def prior_sample(task, n, rng):
    if task == "two_moons":
        return rng.uniform(-1, 1, (n, 2))
    if task == "gaussian_linear":
        return rng.normal(0, np.sqrt(0.1), (n, 10))
    if task == "gaussian_mixture":
        return rng.uniform(-10, 10, (n, 2))
    return rng.uniform(-3, 3, (n, 5))


def in_prior(task, theta):
    if task == "two_moons":
        return np.all(np.abs(theta) < 1, axis=1)
    if task == "gaussian_linear":
        return np.ones(len(theta), bool)
    if task == "gaussian_mixture":
        return np.all(np.abs(theta) < 10, axis=1)
    return np.all(np.abs(theta) < 3, axis=1)


def slcp_moments(theta):
    m = theta[:, :2]
    s1, s2 = theta[:, 2] ** 2, theta[:, 3] ** 2
    rho = np.tanh(theta[:, 4])
    cov = np.empty((len(theta), 2, 2))
    cov[:, 0, 0] = s1 ** 2
    cov[:, 1, 1] = s2 ** 2
    cov[:, 0, 1] = cov[:, 1, 0] = rho * s1 * s2
    return m, cov


def simulate(task, theta, rng):
    n = len(theta)
    if task == "two_moons":
        a = rng.uniform(-np.pi / 2, np.pi / 2, n)
        r = rng.normal(0.1, 0.01, n)
        p = np.stack([r * np.cos(a) + 0.25, r * np.sin(a)], 1)
        return p + np.stack([-np.abs(theta[:, 0] + theta[:, 1]) / np.sqrt(2), (-theta[:, 0] + theta[:, 1]) / np.sqrt(2)], 1)
    if task == "gaussian_linear":
        return theta + rng.normal(0, np.sqrt(0.1), theta.shape)
    if task == "gaussian_mixture":
        scale = np.where(rng.uniform(size=(n, 1)) < 0.5, 1.0, 0.1)
        return theta + scale * rng.normal(size=theta.shape)
    m, cov = slcp_moments(theta)
    chol = np.linalg.cholesky(cov + 1e-12 * np.eye(2))
    z = rng.normal(size=(n, 4, 2))
    x = m[:, None, :] + np.einsum("nij,nkj->nki", chol, z)
    return x.reshape(n, 8)


def log_likelihood(task, theta, x):
    """log p(x | θ) for rows of θ at one observation x (two_moons: none in closed form)."""
    if task == "gaussian_linear":
        return -0.5 * np.sum((x - theta) ** 2, 1) / 0.1
    if task == "gaussian_mixture":
        d2 = np.sum((x - theta) ** 2, 1)
        return np.logaddexp(np.log(0.5) - 0.5 * d2 - np.log(2 * np.pi), np.log(0.5) - 0.5 * d2 / 0.01 - np.log(2 * np.pi * 0.01))
    if task == "slcp":
        m, cov = slcp_moments(theta)
        det = cov[:, 0, 0] * cov[:, 1, 1] - cov[:, 0, 1] ** 2
        det = np.maximum(det, 1e-300)
        inv = np.empty_like(cov)
        inv[:, 0, 0] = cov[:, 1, 1] / det
        inv[:, 1, 1] = cov[:, 0, 0] / det
        inv[:, 0, 1] = inv[:, 1, 0] = -cov[:, 0, 1] / det
        xs = x.reshape(4, 2)
        total = np.zeros(len(theta))
        for k in range(4):
            d = xs[k][None, :] - m
            total += -0.5 * np.einsum("ni,nij,nj->n", d, inv, d) - 0.5 * np.log(det) - np.log(2 * np.pi)
        return total
    raise ValueError(task)


def main():
    args = sys.argv[1:]
    if len(args) < 2 or args[0] not in ("simulate", "sims", "prior") or args[1] not in DIMS:
        sys.exit("usage: tasks.py simulate TASK [--seed S] < theta.csv > x.csv | tasks.py sims TASK N [--seed S] > sims.csv | tasks.py prior TASK")
    task = args[1]
    seed = int(args[args.index("--seed") + 1]) if "--seed" in args else 0
    if args[0] == "prior":
        print(PRIORS[task])
        return
    if args[0] == "sims":
        # N simulations from the prior, with a header: theta1.., x1..
        rng = np.random.default_rng([seed, 7])
        theta = prior_sample(task, int(args[2]), rng)
        x = simulate(task, theta, rng)
        d, k = DIMS[task]
        header = ",".join([f"theta{i + 1}" for i in range(d)] + [f"x{i + 1}" for i in range(k)])
        np.savetxt(sys.stdout, np.concatenate([theta, x], 1), delimiter=",", fmt="%.9g", header=header, comments="")
        return
    text = sys.stdin.read()
    theta = np.loadtxt(text.splitlines(), delimiter=",", ndmin=2) if text.strip() else np.zeros((0, DIMS[task][0]))
    digest = int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little")
    rng = np.random.default_rng([seed, digest])
    x = simulate(task, theta, rng)
    np.savetxt(sys.stdout, x, delimiter=",", fmt="%.9g")


if __name__ == "__main__":
    main()
