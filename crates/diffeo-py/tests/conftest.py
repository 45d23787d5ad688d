import numpy as np
import pytest


@pytest.fixture
def gaussian():
    """Correlated 2-D Gaussian data and its exact log-density."""
    rng = np.random.default_rng(0)
    cov = np.array([[1.0, 0.6], [0.6, 0.5]])
    chol = np.linalg.cholesky(cov)
    mean = np.array([1.0, -2.0])

    def draw(n):
        return mean + rng.normal(size=(n, 2)) @ chol.T

    def log_density(x):
        z = np.linalg.solve(chol, (x - mean).T).T
        return -0.5 * (z**2).sum(1) - np.log(np.diag(chol)).sum() - np.log(2 * np.pi)

    return draw, log_density
