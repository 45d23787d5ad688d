"""The same model files as the command line (DIFFEO_CLI: the `diffeo` binary; .ci/run sets it)."""

import os
import subprocess

import numpy as np
import pytest

import diffeo

CLI = os.environ.get("DIFFEO_CLI")
needs_cli = pytest.mark.skipif(not CLI, reason="DIFFEO_CLI (the diffeo binary) is not set")


@needs_cli
def test_python_model_in_the_cli_gives_identical_log_densities(tmp_path, gaussian):
    draw, _ = gaussian
    flow = diffeo.Flow.maf(2)
    flow.fit(draw(2000), steps=100, progress=False)
    model = tmp_path / "py.dfo"
    flow.save(model)
    points = draw(300)
    data = tmp_path / "points.csv"
    np.savetxt(data, points, delimiter=",", fmt="%.17g")
    out = tmp_path / "lp.npy"
    subprocess.run([CLI, "log-prob", "--model", str(model), "--data", str(data), "--out", str(out)], check=True, capture_output=True)
    np.testing.assert_array_equal(np.load(out), flow.log_prob(points))


@needs_cli
def test_cli_model_in_python_gives_identical_log_densities(tmp_path):
    model = tmp_path / "cli.dfo"
    subprocess.run([CLI, "fit", "--data", "builtin:moons", "--steps", "50", "--quiet", "--out", str(model)], check=True, capture_output=True)
    flow = diffeo.Flow.load(model)
    assert flow.family == "maf" and flow.trained
    points = np.random.default_rng(0).normal(size=(100, 2))
    data = tmp_path / "points.csv"
    np.savetxt(data, points, delimiter=",", fmt="%.17g")
    out = tmp_path / "lp.npy"
    subprocess.run([CLI, "log-prob", "--model", str(model), "--data", str(data), "--out", str(out)], check=True, capture_output=True)
    np.testing.assert_array_equal(np.load(out), flow.log_prob(points))
