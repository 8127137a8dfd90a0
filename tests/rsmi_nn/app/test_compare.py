"""``rsmi compare`` / ``compare_runs`` on real digits-MLP runs: identical runs, other seeds, other inputs, other widths.

The runs are the tiny config (300 digits, short training) with two levels, made once per module
(a few seconds each). GW figures are recomputed here from the saved graph files with scipy and POT
only, without the project's code.
"""

import json

import numpy as np
import pytest
from safetensors.torch import load_file
from scipy.sparse import csr_matrix
from scipy.sparse.csgraph import shortest_path

from rsmi_nn import compare_runs, load_run
from rsmi_nn.app.cli import main
from rsmi_nn.app.config import load_config
from rsmi_nn.app.pipeline import run_pipeline
from tests.rsmi_nn.app.test_cli import assert_one_line_error, run_rsmi

ot = pytest.importorskip("ot")


def digits_run(out, *, seed: int = 0, max_samples: int = 300, width: int | None = None):
    cfg = load_config("tiny")
    for key, value in (("flow.levels", 2), ("flow.steps", 40), ("run.seed", seed),
                       ("source.max_samples", max_samples)):
        cfg.set(key, value)
    if width is not None:
        cfg.set("source.options", {"width": width})
    return run_pipeline(cfg, out, report=False, progress=False)


@pytest.fixture(scope="module")
def runs(tmp_path_factory, one_thread):
    root = tmp_path_factory.mktemp("compare")
    return {"a": digits_run(root / "a"), "a_again": digits_run(root / "a_again"),
            "seed1": digits_run(root / "seed1", seed=1), "fewer": digits_run(root / "fewer", max_samples=200)}


def test_identical_runs_score_one_and_zero(runs, tmp_path):
    result = compare_runs([runs["a"], runs["a_again"]], out=tmp_path / "cmp")
    assert len(result["levels"]) == 2
    for lv in result["levels"]:
        assert lv["matching"]["mean_abs_corr"] == 1.0
        assert lv["matching"]["fraction_above_0.9"] == 1.0
        assert lv["gw_distance"] == 0.0
        inv = lv["invariants"]
        assert inv[str(runs["a"])] == inv[str(runs["a_again"])]
        assert lv["spread"]["mi_mean"]["relative_spread"] == 0.0
    assert result["pairs"][0]["samples"]["rule"] == "same-inputs"
    saved = json.loads((tmp_path / "cmp" / "compare.json").read_text())
    assert saved["runs"] == [str(runs["a"]), str(runs["a_again"])]
    assert saved["levels"][1]["gw_distance"] == 0.0


def test_other_seed_gives_plausible_scores(runs):
    result = compare_runs([runs["a"], runs["seed1"]])
    lv0, lv1 = result["levels"]
    # the level-0 graph is the same (same activations); the partition and the filters depend on the seed
    assert lv0["gw_distance"] == 0.0
    for lv in (lv0, lv1):
        m = lv["matching"]
        assert 0.3 < m["mean_abs_corr"] < 1.0, m["mean_abs_corr"]
        assert 0.0 <= m["fraction_above_0.9"] <= 1.0
        assert m["n_matched"] == min(m["n_a"], m["n_b"])
        assert sum(m["histogram"]["counts"]) == m["n_matched"]
        for inv in lv["invariants"].values():
            assert 0.0 <= inv["locality"] <= 1.0
            assert inv["mi_mean"] > 0 and inv["xi_level0_hops"] > 0
            assert 1.0 <= inv["participation_ratio"] <= inv["num_coarse"]


def _hop_matrix(graph_file):
    """Normalised hop distances from a saved graph (safetensors edge_index), with scipy only."""
    t = load_file(str(graph_file))
    ei = t["edge_index"].numpy()
    n = len(json.loads(graph_file.with_suffix(".json").read_text())["names"])
    adj = csr_matrix((np.ones(ei.shape[1]), (ei[0], ei[1])), shape=(n, n))
    d = shortest_path(adj, directed=False, unweighted=True)
    d[~np.isfinite(d)] = d[np.isfinite(d)].max() + 1
    return d / d.max()


def test_gw_recomputed_with_pot_on_the_saved_graphs(runs):
    result = compare_runs([runs["a"], runs["seed1"]])
    for lv in result["levels"]:
        c1 = _hop_matrix(runs["a"] / "levels" / f"{lv['level']:03d}" / "graph.safetensors")
        c2 = _hop_matrix(runs["seed1"] / "levels" / f"{lv['level']:03d}" / "graph.safetensors")
        expected = ot.gromov.gromov_wasserstein2(c1, c2, ot.unif(len(c1)), ot.unif(len(c2)))
        assert lv["gw_distance"] == pytest.approx(max(float(expected), 0.0), abs=1e-9)
    assert result["levels"][1]["gw_distance"] > 0


def test_runs_on_other_inputs_are_reencoded_on_both_sample_sets(runs):
    result = compare_runs([runs["a"], runs["fewer"]])
    pair = result["pairs"][0]["samples"]
    assert pair["rule"] == "same-units" and pair["n_samples"] == 500
    assert load_run(runs["a"]).levels[0].num_coarse == result["levels"][0]["matching"]["n_a"]
    for lv in result["levels"]:
        assert 0.3 < lv["matching"]["mean_abs_corr"] <= 1.0


def test_other_widths_match_on_the_same_inputs(runs, tmp_path):
    narrow = digits_run(tmp_path / "w32", width=32)
    result = compare_runs([runs["a"], narrow])
    assert result["pairs"][0]["samples"]["rule"] == "same-inputs"
    assert result["run_info"][str(narrow)]["num_units"] == 48
    for lv in result["levels"]:
        assert lv["gw_distance"] > 0 and lv["matching"]["defined"]
        assert lv["matching"]["n_matched"] == min(lv["matching"]["n_a"], lv["matching"]["n_b"])


def test_runs_without_shared_inputs_keep_gw_and_invariants(runs, tmp_path):
    from experiments.fields import gaussian_field_on
    from graphs import lattice_graph
    from rsmi_nn import run_flow

    graph = lattice_graph(8)
    x = gaussian_field_on(graph, 400, mass=0.5, seed=0)
    run_flow(x, graph, levels=1, block_size=4, steps=20, batch_size=64, out=tmp_path / "lattice", progress=False)
    result = compare_runs([runs["a"], tmp_path / "lattice"])
    assert result["pairs"][0]["samples"]["rule"] is None
    lv = result["levels"][0]
    assert lv["matching"]["defined"] is False and lv["matching"]["mean_abs_corr"] is None
    assert "not defined" in lv["matching"]["reason"]
    assert lv["gw_distance"] > 0 and len(lv["invariants"]) == 2
    assert result["levels"][1]["gw_distance"] is None  # the lattice run has one level
    with pytest.raises(ValueError, match="different level-0 units"):
        compare_runs([runs["a"], tmp_path / "lattice"], samples=x)


def test_cli_writes_json_and_html(runs, tmp_path, capsys):
    out = tmp_path / "cli"
    assert main(["compare", str(runs["a"]), str(runs["seed1"]), "--out", str(out), "--quiet"]) == 0
    data = json.loads((out / "compare.json").read_text())
    assert set(data) >= {"runs", "levels"} and len(data["runs"]) == 2
    for lv in data["levels"]:
        assert set(lv) >= {"level", "matching", "gw_distance", "invariants"}
        assert set(lv["matching"]) >= {"mean_abs_corr", "fraction_above_0.9"}
        for inv in lv["invariants"].values():
            assert set(inv) >= {"xi_ratio", "locality", "mi_mean", "participation_ratio"}
    page = (out / "compare.html").read_text()
    assert page.count("data:image/png;base64,") >= 3 and "<script" not in page
    assert (out / "couplings" / "level_001_0_1.npz").is_file()
    assert "matched|corr|" in capsys.readouterr().out


def test_cli_bad_input_is_one_error_line(runs, tmp_path, capsys):
    assert_one_line_error(run_rsmi("compare", runs["a"], tmp_path / "missing", "--out", tmp_path / "x"),
                          "does not exist")
    for args, needle in ((["compare", str(runs["a"]), "--out", str(tmp_path / "x")], "at least two runs"),
                         (["compare", str(runs["a"]), str(runs["seed1"]), "--out", str(tmp_path / "x"),
                           "--samples", str(tmp_path / "none.npy")], "none.npy"),
                         (["compare", str(runs["a"]), str(runs["seed1"]), "--out", str(tmp_path / "x"),
                           "--gw-solver", "fast"], "invalid choice")):
        capsys.readouterr()
        assert main(args) != 0
        lines = capsys.readouterr().err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("rsmi: error: ") and needle in lines[0], lines
    assert not (tmp_path / "x").exists()
