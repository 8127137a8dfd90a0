"""The decimation flow: valid metrics on a lattice and on a non-lattice graph, resume, bad inputs."""

import json
import math

import pytest
import torch

from experiments.gaussian_field import gaussian_field
from experiments.ising2d import sample_ising
from graphs import build_graph, lattice_graph
from rsmi_nn import run_flow

pytestmark = pytest.mark.usefixtures("one_thread")

FAST = {"steps": 100, "eval_every": 25, "batch_size": 128, "binarize": True, "shared": True, "progress": False}


@pytest.fixture(scope="module")
def ising_flow(tmp_path_factory):
    x = sample_ising(16, 2.5, 1500, seed=0)
    out = tmp_path_factory.mktemp("flow") / "full"
    result = run_flow(x, lattice_graph(16), levels=2, block_size=4, out=out, seed=3, **FAST)
    return x, out, result


def _check_record(rec, level):
    assert rec["level"] == level
    for key in ("correlation_length", "correlation_length_level0", "locality", "mi_mean", "mi_ceiling"):
        assert math.isfinite(rec[key]), key
    assert rec["correlation_length"] > 0
    assert 0.0 <= rec["locality"] <= 1.0 and 0.0 <= rec["locality_chance"] <= 1.0
    assert len(rec["mi_per_block"]) == rec["num_blocks"]
    assert all(-0.1 < m <= rec["mi_ceiling"] for m in rec["mi_per_block"])
    assert rec["num_edges"] > 0 and rec["num_nodes"] > rec["num_blocks"]


def test_lattice_flow_metrics(ising_flow):
    _, out, result = ising_flow
    records = json.loads((out / "flow.json").read_text())
    assert [r["num_nodes"] for r in records] == [256, 64]
    assert [r["num_blocks"] for r in records] == [64, 16]
    for level, rec in enumerate(records):
        _check_record(rec, level)
        assert (out / "levels" / f"{level:03d}" / "level.json").exists()
    # level-0 units: xi in level-1 hops times b = 2
    assert records[1]["correlation_length_level0"] == pytest.approx(2 * records[1]["correlation_length"])
    # the coarse lattice is local: its strongest correlations join neighbouring 2x2 blocks
    assert records[0]["locality"] > 0.8 > records[0]["locality_chance"]
    assert result.samples.shape == (1500, 16)
    assert set(torch.unique(result.samples).tolist()) == {-1.0, 1.0}


def test_resume_after_interruption_is_identical(ising_flow, tmp_path):
    x, full_out, _ = ising_flow
    out = tmp_path / "resumed"

    def stop_after_level_0(level, record):
        if level == 0:
            raise KeyboardInterrupt("simulated kill after level 0")

    with pytest.raises(KeyboardInterrupt):
        run_flow(x, lattice_graph(16), levels=2, block_size=4, out=out, seed=3, callback=stop_after_level_0, **FAST)
    assert len(json.loads((out / "flow.json").read_text())) == 1
    resumed = run_flow(x, lattice_graph(16), levels=2, block_size=4, out=out, seed=3, **FAST)
    assert resumed.results[0] is None  # level 0 was loaded, not retrained
    assert (out / "flow.json").read_bytes() == (full_out / "flow.json").read_bytes()
    for name in ("coarse.safetensors", "filters.safetensors", "level.json"):
        assert (out / "levels/001" / name).read_bytes() == (full_out / "levels/001" / name).read_bytes()
    # a different configuration on the same folder is refused
    with pytest.raises(ValueError, match="different configuration.*overwrite=True"):
        run_flow(x, lattice_graph(16), levels=2, block_size=4, out=out, seed=4, **FAST)


def test_a_level_partitioned_otherwise_is_recomputed(ising_flow, tmp_path, caplog):
    """A folder whose level was trained on another partition than this version plans (an earlier partition rule)
    is not read against the new blocks: that level is recomputed, with a warning, to the bytes of a fresh run."""
    import shutil

    from safetensors.torch import load_file, save_file

    x, full_out, _ = ising_flow
    out = tmp_path / "other"
    shutil.copytree(full_out, out)
    path = out / "levels/001/regions.safetensors"
    tensors = load_file(path)
    tensors["blocks"] = torch.roll(tensors["blocks"], 1)  # the same sizes, other members
    save_file(tensors, path)
    with caplog.at_level("WARNING", logger="rsmi_nn.flow"):
        resumed = run_flow(x, lattice_graph(16), levels=2, block_size=4, out=out, seed=3, **FAST)
    assert resumed.results[0] is None and resumed.results[1] is not None  # level 1 retrained
    assert "level 1 in" in caplog.text and "recomputed" in caplog.text
    assert (out / "levels/001/regions.safetensors").read_bytes() == (full_out / "levels/001/regions.safetensors").read_bytes()
    assert (out / "flow.json").read_bytes() == (full_out / "flow.json").read_bytes()


def test_run_written_before_options_were_declared_once_resumes(ising_flow, tmp_path):
    """Regression (issue 12): flow_config.json of earlier versions kept the step options passed, not all."""
    import shutil

    x, full_out, _ = ising_flow
    out = tmp_path / "old"
    shutil.copytree(full_out, out)
    new = json.loads((out / "flow_config.json").read_text())
    options = new.pop("options")
    step = {key: options.pop(key) for key in FAST if key in options}
    old = {**new, **{k: options[k] for k in ("block_size", "buffer", "env", "hidden", "max_env", "rebuild",
                                             "min_nodes")}, "coarse_grain": step}
    # written before min_delta was decided per mode: 0.001 recorded, which a shared filter no longer defaults to
    # (eval_every 25, the value a shared filter's unset default decides, compares equal to unset)
    old["coarse_grain"]["min_delta"] = 0.001
    (out / "flow_config.json").write_text(json.dumps(old))
    # written before coarse_partition existed: its level >= 1 was partitioned on |corr|, which the error names
    with pytest.raises(ValueError, match=r"differs in coarse_partition='corr' \(now 'loading'\)"):
        run_flow(x, lattice_graph(16), levels=2, block_size=4, out=out, seed=3, **FAST)
    with pytest.raises(ValueError, match=r"differs in min_delta=0.001 \(now None\)"):
        run_flow(x, lattice_graph(16), levels=2, block_size=4, out=out, seed=3, **FAST, coarse_partition="corr")
    same = {**FAST, "coarse_partition": "corr", "min_delta": 0.001}
    resumed = run_flow(x, lattice_graph(16), levels=2, block_size=4, out=out, seed=3, **same)
    assert resumed.results == [None, None]  # both levels loaded, nothing retrained
    assert (out / "flow.json").read_bytes() == (full_out / "flow.json").read_bytes()
    with pytest.raises(ValueError, match=r"differs in steps=100 \(now 99\)"):
        run_flow(x, lattice_graph(16), levels=2, block_size=4, out=out, seed=3, **{**same, "steps": 99})


def test_flow_on_irregular_graph(tmp_path):
    graph, _, x = gaussian_field(64, 3000, seed=1)
    result = run_flow(x, graph, levels=2, block_size=4, out=tmp_path / "g", seed=0, k=4, steps=100,
                      eval_every=25, batch_size=128, progress=False)
    assert len(result.records) >= 1
    for level, rec in enumerate(result.records):
        _check_record(rec, level)
    assert result.records[0]["num_nodes"] == 64
    if len(result.records) == 2:
        assert result.records[1]["num_nodes"] == result.records[0]["num_blocks"]
    else:
        assert result.stopped


def test_flow_bad_inputs(tmp_path):
    x = torch.randn(300, 16)
    with pytest.raises(ValueError, match="units but the graph has"):
        run_flow(x[:, :15], lattice_graph(4), out=tmp_path / "a")
    with pytest.raises(ValueError, match="block_size=25 exceeds"):
        run_flow(x, lattice_graph(4), block_size=25, out=tmp_path / "b")
    with pytest.raises(ValueError, match="sqrt"):
        run_flow(x, lattice_graph(4), block_size=3, out=tmp_path / "c")
    with pytest.raises(ValueError, match="empty environment"):
        run_flow(x, lattice_graph(4), block_size=4, buffer=2, out=tmp_path / "d")
    one_group = torch.randn(300, 1) + 0.5 * torch.randn(300, 6)  # six units of one factor: one natural block
    with pytest.raises(ValueError, match="its 6 nodes form one block"):
        run_flow(one_group, build_graph(one_group), block_size=4, out=tmp_path / "e")


def test_recorded_values_equal_to_what_an_unset_default_decides_compare_equal():
    """Run folders written before eval_every / min_delta / patience were decided per mode recorded 50 / 0.001 / 10:
    for per-block filters that is what unset decides (a resume is accepted); a shared filter now decides 25 / 0.01 /
    2 (3 until 2026-12-03), so it differs."""
    from rsmi_nn.rundir import _comparable

    unset = _comparable({"options": {}})
    assert _comparable({"options": {"eval_every": 50, "min_delta": 0.001, "patience": 10}}) == unset
    assert _comparable({"options": {"eval_every": 40}}) != unset
    assert _comparable({"options": {"patience": 5}}) != unset
    shared = _comparable({"options": {"shared": True}})
    assert _comparable({"options": {"shared": True, "eval_every": 25, "min_delta": 0.01, "patience": 2}}) == shared
    assert _comparable({"options": {"shared": True, "patience": 3}}) != shared
    assert _comparable({"options": {"shared": True, "eval_every": 50, "min_delta": 0.001}}) != shared
    assert _comparable({"options": {"shared": True, "patience": 5}}) != shared


def test_how_far_a_flow_goes_is_not_compared_on_resume():
    """``min_nodes`` only decides whether another level is tried (2 x block_size by default until 2026-12-02, recorded
    resolved): a folder that recorded 8 resumes under today's default, as ``levels`` never was compared."""
    from rsmi_nn.rundir import _comparable

    unset = _comparable({"options": {}})
    assert _comparable({"options": {"min_nodes": 8, "levels": 5}}) == unset
    assert _comparable({"options": {"min_nodes": 8, "block_size": 9}}) != unset


def test_two_valued_units_get_a_binary_h_on_a_lattice_only():
    """``binarize="auto"``: Ising spins on their lattice are coarse-grained into block spins; ±1 units of a planted
    hierarchy on a co-occurrence graph keep a real-valued H, which reads the group's latent as well as its best linear
    read-out (a binary H reached 0.77-0.90 of it; docs/planted-hierarchy.md)."""
    from experiments.tmr_heldout import sample_heldout
    from experiments.tmr_scores import multiple_corr
    from graphs import build_graph

    fast = {k: v for k, v in FAST.items() if k not in ("binarize", "shared")}
    spins = sample_ising(8, 2.5, 800, seed=1)
    lattice = run_flow(spins, lattice_graph(8), levels=1, block_size=4, **fast)
    assert lattice.records[0]["binarize"] == "straight-through"
    assert set(lattice.samples.unique().tolist()) == {-1.0, 1.0}

    s = sample_heldout(6000, latent="family", branching=3, depth=2, nuisance=None, coupling=0.6, seed=0,
                       ceiling_rows=2000)
    x = torch.sign(s.x)
    planted = run_flow(x, build_graph(x), levels=1, block_size=4, seed=0, progress=False)
    assert planted.records[0]["binarize"] is None
    blocks, groups, z = planted.blocks[0], s.groups[0], s.latents[0]
    for j in range(int(blocks.max()) + 1):
        g = int(groups[blocks == j].mode().values)
        got = abs(float(torch.corrcoef(torch.stack([planted.samples[:, j], z[:, g]]))[0, 1]))
        assert got > 0.9 * multiple_corr(x[:, groups == g], z[:, g]), j
