"""A 6-D banana-shaped density with a known log-density: three independent pairs
(a, b) with a ~ N(0, 1) and b = (a² − 1) + N(0, 0.5²). Writes train (50,000), val (5,000) and
test (10,000) CSVs (no header) and prints the exact mean test log-density and the entropy bound.

    python banana.py OUT_DIR [--seed 0]
"""

import math
import os
import sys

import numpy as np


def sample(n, rng):
    a = rng.normal(size=(n, 3))
    b = a ** 2 - 1 + 0.5 * rng.normal(size=(n, 3))
    return np.stack([a[:, 0], b[:, 0], a[:, 1], b[:, 1], a[:, 2], b[:, 2]], axis=1)


def log_prob(x):
    a, b = x[:, 0::2], x[:, 1::2]
    r = b - (a ** 2 - 1)
    return (-0.5 * a ** 2 - 0.5 * math.log(2 * math.pi) - 0.5 * (r / 0.5) ** 2 - math.log(0.5) - 0.5 * math.log(2 * math.pi)).sum(1)


if __name__ == "__main__":
    out = sys.argv[1]
    seed = int(sys.argv[sys.argv.index("--seed") + 1]) if "--seed" in sys.argv else 0
    rng = np.random.default_rng(seed)
    os.makedirs(out, exist_ok=True)
    for name, n in (("train", 50000), ("val", 5000), ("test", 10000)):
        x = sample(n, rng)
        np.savetxt(f"{out}/{name}.csv", x, delimiter=",", fmt="%.9g")
        if name == "test":
            print(f"exact mean test log-density {log_prob(x).mean():.4f}; entropy bound {-3 * (math.log(2 * math.pi * math.e) / 2 * 2 + math.log(0.5)):.4f}")
