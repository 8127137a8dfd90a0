"""The real pipeline end to end: `rsmi run` on the tiny config, `rsmi flow` on raw lattice/graph samples.

These run the actual engine (recording, graph, RSMI flow, export, report) on small inputs, so they
check the contracts between the packages: the run directory format, the feature maps composed back
to level-0 units (they must reproduce the flow's own coarse variables), and resuming.
"""

import json

import numpy as np
import pytest
import torch

from experiments.fields import gaussian_field_on
from graphs import lattice_graph
from rsmi_nn import load_run
from rsmi_nn.app.cli import main
from tests.rsmi_nn.app.test_cli import run_rsmi

FIELD_MASS = 0.5  # correlation length ≈ 2 sites on the unit lattice: neighbouring sites are correlated


def lattice_field(graph, n: int, *, seed: int = 0) -> np.ndarray:
    """``n`` samples ``[n, U]`` (float32) of the Gaussian field on ``graph`` (``experiments.fields``)."""
    return gaussian_field_on(graph, n, mass=FIELD_MASS, seed=seed).numpy()


def _check_composition(run, level0: torch.Tensor) -> None:
    """x0 @ M_l reproduces the flow's level-l coarse variables up to a constant (linear filters)."""
    for level in run.levels:
        coarse = level.coarse_samples().double()
        pred = level0.double() @ run.feature_maps(level.index).double()
        err = (pred - pred.mean(0)) - (coarse - coarse.mean(0))
        scale = coarse.std(0).clamp_min(1e-6)
        assert float((err.abs() / scale).max()) < 1e-3, f"level {level.index}"


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("tiny") / "run"
    proc = run_rsmi("run", "tiny", "--out", out, "--quiet")
    assert proc.returncode == 0, proc.stderr
    return out, proc


def test_run_tiny_writes_the_whole_run_directory(tiny_run):
    out, proc = tiny_run
    assert "Traceback" not in proc.stderr
    for name in ("flow.json", "report.html", "config.toml", "versions.json", "timings.json", "graph.json",
                 "activations/manifest.json", "feature_maps/index.json", "feature_maps/level_000.safetensors",
                 "feature_maps/level_000.json", "graphs/level_000.graphml", "examples/level_000.json",
                 "plots/flow.png", "plots/graph_level_000.png"):
        assert (out / name).is_file(), name
    flow = json.loads((out / "flow.json").read_text())
    assert len(flow) == 1
    for key in ("level", "num_nodes", "num_blocks", "correlation_length", "locality", "mi_mean", "mi_per_block"):
        assert key in flow[0]
    run = load_run(out)
    level = run.levels[0]
    assert run.feature_maps(0).shape == (run.num_units, level.num_coarse)
    assert run.unit_names[0].startswith("hidden.")
    from graphs import ActivationStore

    store = ActivationStore.open(out / "activations")
    assert store.num_samples == 300
    x0 = store.to_tensor(units=run.unit_names)
    _check_composition(run, x0)
    examples = run.examples(0)
    assert len(examples["variables"]) == level.num_coarse and "input" in examples["variables"][0][0]


def test_run_again_resumes_without_recomputing(tiny_run):
    out, _ = tiny_run
    before = (out / "flow.json").read_bytes()
    (out / "report.html").unlink()
    proc = run_rsmi("run", "tiny", "--out", out, "--quiet")
    assert proc.returncode == 0, proc.stderr
    assert (out / "flow.json").read_bytes() == before
    stages = json.loads((out / "timings.json").read_text())["stages"]
    assert stages["record"]["skipped"] and stages["graph"]["skipped"] and stages["flow"]["skipped"]
    assert stages["export"]["skipped"] and not stages["report"]["skipped"]
    assert (out / "report.html").is_file()


def test_flow_on_raw_lattice_samples(tmp_path):
    L = 8
    np.save(tmp_path / "x.npy", lattice_field(lattice_graph(L), 400))  # periodic: the FFT sampler
    out = tmp_path / "lat"
    rc = main(["flow", "--samples", str(tmp_path / "x.npy"), "--lattice", str(L), "--levels", "2", "--out", str(out),
               "--steps", "25", "--train-batch-size", "64", "--quiet"])
    assert rc == 0
    flow = json.loads((out / "flow.json").read_text())
    assert [r["num_nodes"] for r in flow] == [64, 16]
    assert [r["num_blocks"] for r in flow] == [16, 4]
    run = load_run(out)
    assert run.feature_maps(1).shape == (64, 4)
    # a level-1 variable is fed by the 16 sites of its 4x4 super-block only (and by all of them: no dead filter)
    support = run.feature_maps(1).abs() > 0
    assert support.sum(0).tolist() == [16] * 4
    _check_composition(run, torch.from_numpy(np.load(tmp_path / "x.npy")))
    assert (out / "report.html").is_file() and (out / "plots" / "flow.png").is_file()


def test_flow_on_samples_with_a_graph_file(tmp_path):
    from safetensors.numpy import save_file

    L = 6
    graph = lattice_graph(L, periodic=False)
    graph.save(tmp_path / "g")
    save_file({"samples": lattice_field(graph, 400, seed=1)}, str(tmp_path / "x.safetensors"))  # the dense sampler
    out = tmp_path / "gr"
    rc = main(["flow", "--samples", str(tmp_path / "x.safetensors"), "--graph", str(tmp_path / "g.json"),
               "--levels", "1", "--block-size", "4", "--steps", "30", "--train-batch-size", "64", "--out", str(out),
               "--quiet"])
    assert rc == 0
    run = load_run(out)
    assert run.levels[0].num_units == 36
    assert run.feature_maps(0).shape[0] == 36
