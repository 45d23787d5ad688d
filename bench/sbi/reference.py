"""The sbibm reference data (MIT-licensed, from the sbibm wheel on PyPI): observations 1–10 and
10,000 reference posterior samples per observation, extracted to OUT/TASK/obsN/{observation,
reference}.csv. Gaussian linear references are also checked against the closed form.

    python reference.py OUT [WHEEL]"""

import bz2
import io
import os
import subprocess
import sys
import tempfile
import zipfile

import numpy as np

TASKS = ["two_moons", "gaussian_linear", "gaussian_mixture", "slcp"]


def wheel_path(cache):
    found = [f for f in os.listdir(cache) if f.startswith("sbibm-") and f.endswith(".whl")] if os.path.isdir(cache) else []
    if found:
        return os.path.join(cache, found[0])
    os.makedirs(cache, exist_ok=True)
    subprocess.run([sys.executable, "-m", "pip", "download", "sbibm==1.1.0", "--no-deps", "-d", cache, "-q"], check=True)
    return wheel_path(cache)


def main():
    out = sys.argv[1]
    wheel = sys.argv[2] if len(sys.argv) > 2 else wheel_path(os.path.join(out, "wheel"))
    z = zipfile.ZipFile(wheel)
    for task in TASKS:
        for k in range(1, 11):
            base = f"sbibm/tasks/{task}/files/num_observation_{k}/"
            d = os.path.join(out, task, f"obs{k}")
            os.makedirs(d, exist_ok=True)
            obs = np.loadtxt(io.StringIO(z.read(base + "observation.csv").decode()), delimiter=",", skiprows=1, ndmin=2)
            ref = np.loadtxt(io.StringIO(bz2.decompress(z.read(base + "reference_posterior_samples.csv.bz2")).decode()), delimiter=",", skiprows=1, ndmin=2)
            true = np.loadtxt(io.StringIO(z.read(base + "true_parameters.csv").decode()), delimiter=",", skiprows=1, ndmin=2)
            np.savetxt(os.path.join(d, "observation.csv"), obs, delimiter=",", fmt="%.9g")
            np.savetxt(os.path.join(d, "reference.csv"), ref, delimiter=",", fmt="%.9g")
            np.savetxt(os.path.join(d, "true_parameters.csv"), true, delimiter=",", fmt="%.9g")
            if task == "gaussian_linear":
                # Posterior N(x/2, 0.05 I): prior and likelihood variances are both 0.1.
                mean_err = np.abs(ref.mean(0) - obs[0] / 2).max()
                assert mean_err < 0.02, (k, mean_err)
    print(f"reference data in {out}")


if __name__ == "__main__":
    main()
