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


def test_npe_with_a_python_simulator_over_sequential_rounds():
    rng = np.random.default_rng(1)
    calls = []

    def simulator(theta):
        calls.append(theta.shape)
        return simulate(theta, rng)

    observation = np.array([0.5, 0.1])
    posterior = diffeo.npe(prior="uniform:-1:1x2", simulator=simulator, observation=observation, rounds=2, simulations=2000,
                           simulation_batch=500, ensemble=1, max_epochs=30, progress=False)
    assert calls[0] == (500, 2) and len(calls) == 4
    theta, x = posterior.simulations
    assert theta.shape == (2000, 2) and x.shape == (2000, 2)
    s = posterior.sample(1000, observation, seed=0)
    np.testing.assert_allclose(s.mean(0), observation, atol=0.05)


def test_a_failing_simulator_keeps_what_it_simulated():
    rng = np.random.default_rng(2)
    calls = []

    def simulator(theta):
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("the simulator broke")
        return simulate(theta, rng)

    with pytest.raises(RuntimeError, match="broke") as caught:
        diffeo.npe(prior="uniform:-1:1x2", simulator=simulator, simulations=2000, simulation_batch=500, progress=False)
    theta, x = caught.value.simulations
    assert theta.shape == (1000, 2) and x.shape == (1000, 2)
    np.testing.assert_allclose(x, theta, atol=0.6)
