import signal
import threading
import _thread

import numpy as np
import pytest

import diffeo


def test_families_lists_the_command_lines():
    names = [name for name, _ in diffeo.families()]
    assert {"maf", "nsf", "realnvp", "nsf-coupling", "glow"} <= set(names)


def test_untrained_maf_is_the_standard_normal():
    flow = diffeo.Flow.maf(3)
    x = np.random.default_rng(1).normal(size=(50, 3))
    exact = -0.5 * (x**2).sum(1) - 1.5 * np.log(2 * np.pi)
    lp = flow.log_prob(x)
    assert lp.shape == (50,) and lp.dtype == np.float64
    np.testing.assert_allclose(lp, exact, atol=1e-4)


def test_fit_reaches_the_exact_log_likelihood(gaussian):
    draw, log_density = gaussian
    flow = diffeo.Flow.maf(2, transforms=3, hidden=(32, 32))
    report = flow.fit(draw(8000), steps=600, batch=256, progress=False)
    assert isinstance(report, diffeo.FitReport)
    assert report.steps == 600 and report.best_val_log_likelihood is not None
    test = draw(4000)
    gap = np.mean(log_density(test)) - np.mean(flow.log_prob(test))
    # The exact model scores best on average: the fit is within a few hundredths of a nat.
    assert -0.03 < gap < 0.06, gap
    assert flow.trained


def test_inputs_of_any_float_layout_give_the_same_densities(gaussian):
    draw, _ = gaussian
    flow = diffeo.Flow.maf(2)
    flow.fit(draw(2000), steps=50, progress=False)
    x = draw(100)
    base = flow.log_prob(x)
    np.testing.assert_array_equal(flow.log_prob(np.asfortranarray(x)), base)
    np.testing.assert_array_equal(flow.log_prob(x.tolist()), base)
    np.testing.assert_allclose(flow.log_prob(x.astype(np.float32)), base, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(flow.log_prob(np.vstack([x, x])[::2]), flow.log_prob(np.ascontiguousarray(np.vstack([x, x])[::2])))
    out32 = flow.log_prob(x, dtype=np.float32)
    assert out32.dtype == np.float32


def test_save_and_load_keep_the_densities(tmp_path, gaussian):
    draw, _ = gaussian
    flow = diffeo.Flow.nsf(2, transforms=2, hidden=(16, 16), bins=4)
    flow.fit(draw(2000), steps=100, progress=False)
    path = tmp_path / "nsf.dfo"
    flow.save(path)
    again = diffeo.Flow.load(str(path))
    x = draw(200)
    np.testing.assert_array_equal(again.log_prob(x), flow.log_prob(x))
    assert again.trained and again.dim == 2 and again.family == "nsf"
    assert again.info()["training"]["steps"] == 100
    # A second fit continues the first.
    again.fit(draw(2000), steps=20, progress=False)
    assert again.info()["training"]["steps"] == 120


def test_sampling_shapes_seeds_and_consistency(gaussian):
    draw, _ = gaussian
    flow = diffeo.Flow.realnvp(2)
    flow.fit(draw(2000), steps=100, progress=False)
    s = flow.sample(500, seed=3)
    assert s.shape == (500, 2) and np.isfinite(s).all()
    np.testing.assert_array_equal(s, flow.sample(500, seed=3))
    assert not np.array_equal(s, flow.sample(500, seed=4))
    x, lp = flow.sample_and_log_prob(300, seed=5)
    assert x.shape == (300, 2) and lp.shape == (300,)
    np.testing.assert_allclose(flow.log_prob(x), lp, atol=2e-3, rtol=1e-4)

    # A density-only model (BNAF has no base-to-data direction) refuses both with the same line.
    bnaf = diffeo.Flow.build("bnaf", 2)
    bnaf.fit(draw(500), steps=3, progress=False)
    for call in (lambda: bnaf.sample(5), lambda: bnaf.sample_and_log_prob(5)):
        with pytest.raises(ValueError, match="evaluate densities only"):
            call()


def test_conditional_flow_takes_one_or_per_row_contexts():
    rng = np.random.default_rng(2)
    c = rng.uniform(-1, 1, size=(4000, 1))
    x = np.hstack([c + 0.1 * rng.normal(size=c.shape), -c + 0.1 * rng.normal(size=c.shape)])
    flow = diffeo.Flow.maf(2, context_dim=1, hidden=(32, 32))
    flow.fit(x, context=c, steps=400, progress=False)
    at = np.array([0.5])
    s = flow.sample(2000, context=at, seed=0)
    assert s.shape == (2000, 2)
    assert abs(s[:, 0].mean() - 0.5) < 0.1 and abs(s[:, 1].mean() + 0.5) < 0.1
    grid = flow.sample(10, context=np.array([[0.0], [0.5], [-0.5]]), seed=0)
    assert grid.shape == (3, 10, 2)
    points = x[:5]
    one = flow.log_prob(points, at)
    per_row = flow.log_prob(points, np.repeat(at[None, :], 5, axis=0))
    np.testing.assert_allclose(one, per_row, rtol=1e-6)
    with pytest.raises(ValueError, match="context"):
        flow.log_prob(points)
    with pytest.raises(ValueError, match="rows"):
        flow.log_prob(points, np.zeros((3, 1)))


def test_weight_averaging_is_the_last_weights_at_decay_zero(gaussian):
    draw, _ = gaussian
    x, probe = draw(1000), draw(20)
    plain, averaged = diffeo.Flow.maf(2, transforms=2), diffeo.Flow.maf(2, transforms=2)
    plain.fit(x, steps=30, val=x[:200], progress=False)
    averaged.fit(x, steps=30, val=x[:200], average_decay=0.0, progress=False)
    np.testing.assert_array_equal(plain.log_prob(probe), averaged.log_prob(probe))
    smoothed = diffeo.Flow.maf(2, transforms=2)
    smoothed.fit(x, steps=30, val=x[:200], average_decay=0.9, progress=False)
    assert not np.array_equal(plain.log_prob(probe), smoothed.log_prob(probe))


def test_bad_inputs_raise_value_errors(gaussian, tmp_path):
    draw, _ = gaussian
    flow = diffeo.Flow.maf(2)
    with pytest.raises(ValueError, match="shape"):
        flow.log_prob(np.zeros((10, 3)))
    with pytest.raises(ValueError, match="dtype"):
        flow.log_prob(np.zeros((10, 2), dtype=np.int64))
    bad = draw(10)
    bad[3, 1] = np.nan
    with pytest.raises(ValueError):
        flow.log_prob(bad)
    with pytest.raises(ValueError):
        flow.fit(bad, steps=5, progress=False)
    with pytest.raises(ValueError, match="empty"):
        flow.log_prob(np.zeros((0, 2)))
    with pytest.raises(ValueError, match="context"):
        flow.log_prob(draw(3), np.zeros(1))
    with pytest.raises(ValueError, match="unknown option"):
        diffeo.Flow.maf(2, widths=3)
    with pytest.raises(ValueError, match="unknown flow family"):
        diffeo.Flow.build("nope", 2)
    with pytest.raises(ValueError, match="schedule"):
        flow.fit(draw(100), steps=5, schedule="linear", progress=False)
    with pytest.raises(ValueError, match="average_decay"):
        flow.fit(draw(100), steps=5, average_decay=1.0, progress=False)
    with pytest.raises(FileNotFoundError):
        diffeo.Flow.load(tmp_path / "missing.dfo")
    corrupt = tmp_path / "corrupt.dfo"
    corrupt.write_bytes(b"not a model")
    with pytest.raises(OSError):
        diffeo.Flow.load(corrupt)
    assert not flow.trained


def test_self_check_passes(gaussian):
    draw, _ = gaussian
    flow = diffeo.Flow.nsf_coupling(2, transforms=2, hidden=(16, 16))
    flow.fit(draw(1000), steps=50, progress=False)
    result = flow.check(n=200)
    assert result["passed"], result


def test_ctrl_c_stops_the_fit_and_keeps_the_best_model(gaussian):
    draw, _ = gaussian
    flow = diffeo.Flow.maf(2)
    x = draw(4000)
    # Ctrl-C every 0.3 s (from 1 s on) until the fit returns, so that an interruption that
    # lands before the fit has started is retried; only the first raises KeyboardInterrupt. A
    # time budget bounds the test if none is seen.
    returned, raised = threading.Event(), []

    def on_ctrl_c(signum, frame):
        if not raised:
            raised.append(signum)
            raise KeyboardInterrupt

    def press_ctrl_c():
        if not returned.wait(1.0):
            while not returned.is_set():
                _thread.interrupt_main()
                returned.wait(0.3)

    previous = signal.signal(signal.SIGINT, on_ctrl_c)
    presser = threading.Thread(target=press_ctrl_c, daemon=True)
    presser.start()
    try:
        with pytest.raises(KeyboardInterrupt):
            flow.fit(x, time_budget=120, eval_every=20, progress=False)
    finally:
        returned.set()
        presser.join()
        signal.signal(signal.SIGINT, previous)
    assert flow.trained
    info = flow.info()["training"]
    assert 0 < info["steps"] and info["seconds"] < 100
    assert np.isfinite(flow.log_prob(draw(10))).all()
