"""Coarse levels that read the level-0 units (filter_inputs="units") and filters started at the principal components."""

import numpy as np
import pytest
import torch

from experiments.tmr import sample_tmr
from graphs import build_graph, make_regions
from rsmi_nn import coarse_grain, load_run, run_flow
from rsmi_nn.unit_inputs import cover_next, step_inputs

pytestmark = pytest.mark.usefixtures("one_thread")

QUICK = {"steps": 1000, "eval_every": 25, "batch_size": 128, "progress": False}


def test_cover_next_follows_the_first_kept_node_of_each_block():
    cover = torch.tensor([0, 1, 2, 3, 4, -1])  # six level-0 units on five nodes (the last unit in no node)
    blocks = torch.tensor([1, 1, 0, 2, 0])  # the five nodes in three blocks
    node_blocks = torch.tensor([0, 0, 2])  # next level: block 0 gave two nodes, block 1 none, block 2 one
    assert cover_next(cover, blocks, node_blocks).tolist() == [-1, -1, 0, 2, 0, -1]


def test_step_inputs_reads_the_covered_units_and_shifts_the_environment():
    gen = torch.Generator().manual_seed(0)
    x0, x1 = torch.randn(50, 12, generator=gen), torch.randn(50, 6, generator=gen)
    cover = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, -1])  # level-0 unit -> level-1 node
    graph = build_graph(x1, k=3)
    regions = make_regions(graph, torch.tensor([0, 0, 1, 1, 2, 2]), buffer=0, env=1)
    both, step, saved = step_inputs(x0, x1, regions, cover)
    assert torch.equal(both, torch.cat([x0, x1], 1)) and step.num_nodes == 18
    for j in range(3):
        units = sorted(step.visible[j][step.visible_mask[j]].tolist())
        assert units == [u for u in range(11) if int(regions.blocks[cover[u]]) == j]
        assert torch.equal(saved.visible[j], step.visible[j])
        env = regions.environment[j][regions.environment_mask[j]]
        assert step.environment[j][step.environment_mask[j]].tolist() == (env + 12).tolist()
        assert saved.environment[j][saved.environment_mask[j]].tolist() == env.tolist()


@pytest.fixture(scope="module")
def unit_flow(tmp_path_factory):
    sample = sample_tmr(3000, branching=4, depth=3, group_size=4, seed=0)
    out = tmp_path_factory.mktemp("units") / "run"
    result = run_flow(sample.x, build_graph(sample.x, k=8), levels=2, block_size=4, out=out, seed=0,
                      filter_inputs="units", **QUICK)
    return sample, out, result


def test_a_unit_level_reads_the_level0_units_of_its_block(unit_flow):
    sample, out, result = unit_flow
    run = load_run(out)
    assert [lv.reads_units for lv in run.levels] == [False, True]
    assert run.levels[1].num_units == run.levels[0].num_coarse
    composed = run.feature_map_sparse(1).toarray()
    assert composed.shape == (sample.x.shape[1], run.levels[1].num_coarse)
    blocks = run.unit_blocks(1).numpy()
    for j in range(run.levels[1].num_blocks):  # support = exactly the block's union of level-0 units
        assert set(np.nonzero(composed[:, j])[0]) == set(np.nonzero(blocks == j)[0])
    for level, codes in enumerate(run.encode(sample.x)):
        assert torch.allclose(codes, run.levels[level].coarse_samples(), atol=1e-5)
    centred = sample.x.double() @ torch.from_numpy(composed)
    codes = run.encode(sample.x)[1].double()
    assert torch.allclose(centred - centred.mean(0), codes - codes.mean(0), atol=1e-4)


def test_a_unit_level_reads_its_planted_latent(unit_flow):
    sample, out, _ = unit_flow
    run = load_run(out)
    codes = run.encode(sample.x)[1]
    blocks = run.unit_blocks(1)
    for j in range(codes.shape[1]):
        group = int(torch.mode(sample.groups[1][blocks == j]).values)
        r = np.corrcoef(codes[:, j].numpy(), sample.latents[1][:, group].numpy())[0, 1]
        assert abs(r) > 0.85, (j, r)  # measured 0.917-0.921 (filter_inputs="variables": 0.898-0.927)


def test_a_unit_flow_resumes_to_the_same_bytes(unit_flow, tmp_path):
    sample, out, first = unit_flow
    again = run_flow(sample.x, build_graph(sample.x, k=8), levels=2, block_size=4, out=out, seed=0,
                     filter_inputs="units", **QUICK)
    assert all(r is None for r in again.results)  # both levels loaded, nothing trained
    assert torch.equal(again.samples, first.samples)


def _block_pcs(x: torch.Tensor, blocks: list[list[int]]) -> list[np.ndarray]:
    z = ((x - x.mean(0)) / x.std(0)).double().numpy()
    return [np.linalg.eigh(np.cov(z[:, b].T))[1][:, -1] for b in blocks]


def test_init_pca_starts_each_filter_at_its_blocks_principal_component():
    gen = torch.Generator().manual_seed(1)
    factors = torch.randn(2000, 6, generator=gen).cumsum(1) / 2  # one factor per block, neighbours correlated
    loadings = torch.rand(6, 4, generator=gen) + 0.5
    x = (factors[:, :, None] * loadings).reshape(2000, 24) + 0.5 * torch.randn(2000, 24, generator=gen)
    regions = make_regions(build_graph(x, k=6), torch.arange(24) // 4, buffer=0, env=2)
    res = coarse_grain(x, regions, init="pca", steps=1, lr=1e-9, seed=0)
    members = [regions.visible[j][regions.visible_mask[j]].tolist() for j in range(regions.num_blocks)]
    for j, pc in enumerate(_block_pcs(x, members)):
        w = res.filters[j, : len(pc), 0].double().numpy()
        assert abs(float(w @ pc)) > 0.999, j
    random = coarse_grain(x, regions, init="random", steps=1, lr=1e-9, seed=0)
    cosines = [abs(float(random.filters[j, : len(pc), 0].double().numpy() @ pc))
               for j, pc in enumerate(_block_pcs(x, members))]
    assert min(cosines) < 0.95  # a random start is not already there


def test_init_pca_needs_a_linear_filter():
    with pytest.raises(ValueError, match="init='pca'"):
        coarse_grain(torch.randn(300, 8), None, init="pca", filter="mlp")
