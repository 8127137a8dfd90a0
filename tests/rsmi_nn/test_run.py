"""Reading a run back: ``Run.encode`` reproduces the flow's coarse samples, ``Run.unit_blocks`` its blocks."""

import pytest
import torch

from experiments.gaussian_field import gaussian_field
from rsmi_nn import load_run, run_flow

pytestmark = pytest.mark.usefixtures("one_thread")

FAST = {"steps": 60, "eval_every": 20, "batch_size": 128, "progress": False}


@pytest.fixture(scope="module")
def field():
    graph, _, x = gaussian_field(256, 2000, seed=2)
    return graph, x


@pytest.mark.parametrize("options", [
    {"hidden": 2},
    {"binarize": "straight-through"},
    {"filter": "mlp", "rebuild": "samples"},
], ids=["linear-h2", "binarised", "mlp"])
def test_encode_reproduces_the_flow(field, tmp_path, options):
    graph, x = field
    out = tmp_path / "run"
    run_flow(x, graph, levels=2, block_size=4, k=4, out=out, seed=1, **FAST, **options)
    run = load_run(out)
    assert len(run.levels) == 2
    encoded = run.encode(x)
    for level, z in zip(run.levels, encoded):
        torch.testing.assert_close(z, level.coarse_samples(), rtol=0, atol=1e-5)
    if options.get("binarize"):
        assert set(encoded[-1].unique().tolist()) <= {-1.0, 1.0}
    # new activations: the same map, row by row (no batch statistics)
    fresh = x[:7] + 0.1
    torch.testing.assert_close(run.encode(fresh)[1][3], run.encode(fresh[3:4])[1][0], rtol=0, atol=1e-5)


def test_encode_refuses_wrong_width(field, tmp_path):
    graph, x = field
    run_flow(x, graph, levels=1, block_size=4, k=4, out=tmp_path / "r", seed=0, **FAST)
    with pytest.raises(ValueError, match="level-0 units"):
        load_run(tmp_path / "r").encode(x[:, :10])


def test_unit_blocks_compose_the_partitions(field, tmp_path):
    graph, x = field
    run_flow(x, graph, levels=2, block_size=4, k=4, out=tmp_path / "r", seed=0, **FAST)
    run = load_run(tmp_path / "r")
    b0, b1 = run.unit_blocks(0), run.unit_blocks(1)
    assert torch.equal(b0, run.levels[0].blocks)
    # level 1 units are level-0 blocks (h = 1, quotient graph): a unit's level-1 block is its block's block
    assert torch.equal(b1, run.levels[1].blocks[b0])
    assert b1.unique().numel() == run.levels[1].num_blocks
    # every level-1 block is a union of whole level-0 blocks
    for j in b0.unique():
        assert b1[b0 == j].unique().numel() == 1
