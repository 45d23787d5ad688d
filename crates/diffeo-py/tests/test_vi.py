import numpy as np
import pytest

import diffeo

MEAN = np.array([1.0, -0.5])
SCALE = np.array([0.5, 2.0])
LOG_Z = np.log(SCALE).sum() + np.log(2 * np.pi)


def log_density(x):
    return -0.5 * (((x - MEAN) / SCALE) ** 2).sum(1)


def test_vi_on_a_callable_finds_log_z_within_three_standard_errors():
    calls = []

    def target(x):
        calls.append(x.shape)
        return log_density(x)

    flow, diag = diffeo.vi(target, 2, flow="realnvp", steps=800, samples=128, transforms=4, hidden=(32, 32), diagnostic_samples=4000, progress=False)
    assert abs(diag["log_z"] - LOG_Z) < 3 * diag["log_z_stderr"] + 1e-3, diag
    assert diag["elbo"] <= LOG_Z + 3 * diag["elbo_stderr"]
    assert diag["khat"] < 0.7
    # One call per step: the step's 128 draws, then (differences) their 2·D shifted copies with them.
    assert calls[0] == (128, 2) and calls[1] == (4 * 128, 2) and calls[2] == (5 * 128, 2)
    s = flow.sample(4000, seed=0)
    np.testing.assert_allclose(s.mean(0), MEAN, atol=0.15)
    np.testing.assert_allclose(s.std(0), SCALE, rtol=0.1)


def test_vi_with_gradients_calls_the_target_once_per_step():
    calls = []

    def target(x):
        calls.append(x.shape[0])
        return log_density(x), -(x - MEAN) / SCALE**2

    flow, diag = diffeo.vi(target, 2, flow="realnvp", steps=400, samples=64, log_z=LOG_Z, diagnostic_samples=2000, progress=False)
    assert all(n == 64 for n in calls[:400])
    assert diag["true_log_z"] == pytest.approx(LOG_Z)
    assert diag["kl"] < 0.05, diag


def test_vi_built_in_target_by_name():
    flow, diag = diffeo.vi("banana", flow="realnvp", steps=200, samples=64, diagnostic_samples=1000, progress=False)
    assert flow.dim == 2 and np.isfinite(diag["log_z"])


def test_vi_errors_come_back_as_python_exceptions():
    def broken(x):
        raise ZeroDivisionError("no")

    with pytest.raises(ZeroDivisionError):
        diffeo.vi(broken, 2, steps=10, progress=False)
    with pytest.raises(ValueError, match="shape"):
        diffeo.vi(lambda x: np.zeros(3), 2, steps=10, progress=False)
    with pytest.raises(ValueError, match="dim"):
        diffeo.vi(log_density, steps=10, progress=False)
    with pytest.raises(ValueError, match="flow"):
        diffeo.vi(log_density, 2, flow="maf", steps=10, progress=False)
