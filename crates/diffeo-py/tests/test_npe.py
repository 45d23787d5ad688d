import numpy as np
import pytest

import diffeo


def simulate(theta, rng):
    return theta + 0.1 * rng.normal(size=theta.shape)


def test_npe_recovers_a_linear_gaussian_posterior(tmp_path):
    rng = np.random.default_rng(0)
    theta = rng.uniform(-1, 1, size=(3000, 2))
    x = simulate(theta, rng)
    posterior = diffeo.npe(theta, x, prior="uniform:-1:1x2", ensemble=1, max_epochs=40, progress=False)
    observation = np.array([0.3, -0.2])
    s = posterior.sample(2000, observation, seed=0)
    assert s.shape == (2000, 2)
    np.testing.assert_allclose(s.mean(0), observation, atol=0.05)
    np.testing.assert_allclose(s.std(0), [0.1, 0.1], rtol=0.25)
    lp = posterior.log_prob(np.array([[0.3, -0.2], [1.5, 0.0]]), observation)
    assert np.isfinite(lp[0]) and lp[1] == -np.inf
    path = tmp_path / "posterior.dfo"
    posterior.save(path)
    again = diffeo.Posterior.load(path)
    assert again.prior == posterior.prior and again.x_dim == 2
    np.testing.assert_array_equal(again.log_prob(s[:10], observation), posterior.log_prob(s[:10], observation))


def test_npe_bad_inputs():
    theta = np.zeros((10, 2))
    with pytest.raises(ValueError, match="rows"):
        diffeo.npe(theta, np.zeros((9, 2)), prior="uniform:-1:1x2", progress=False)
    with pytest.raises(ValueError):
        diffeo.npe(theta, np.zeros((10, 2)), prior="nonsense", progress=False)
