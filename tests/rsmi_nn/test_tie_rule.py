"""A binarised one-component filter within ``UNIFORM_SPREAD`` of uniform is made exactly uniform, so tied configurations
share a side: every 2-2 configuration of a 2x2 Ising block gets one H (measured: more I(H;E) than any learnt tie
pattern)."""

import pytest
import torch

from experiments.ising2d import T_CRITICAL, sample_ising
from graphs import lattice_blocks, lattice_graph, make_regions, partition
from rsmi_nn import coarse_grain
from rsmi_nn.filters import UNIFORM_SPREAD, LinearFilter, uniform_blocks

pytestmark = pytest.mark.usefixtures("one_thread")


def _filter(weight: torch.Tensor, mask: torch.Tensor, binarize: str | None = "straight-through") -> LinearFilter:
    filt = LinearFilter(mask.shape[0], mask.shape[1], weight.shape[-1], mask, binarize=binarize,
                        shared=weight.shape[0] == 1 < mask.shape[0])
    with torch.no_grad():
        filt.weight.copy_(weight)
    return filt


def test_near_uniform_filters_snap_with_their_signs_and_others_stay():
    mask = torch.tensor([[True, True, True, True], [True, True, True, False], [True, True, True, True]])
    near = 1.0 - 0.99 * UNIFORM_SPREAD  # just inside the spread
    weight = torch.tensor([[[0.5], [-0.45], [0.55], [-0.52]],
                           [[0.6], [0.6 * near], [0.58], [7.0]],  # the pad's weight is not read
                           [[1.0], [1.0 - 1.01 * UNIFORM_SPREAD], [1.0], [1.0]]])  # just outside
    filt = _filter(weight, mask)
    before = filt.unit_weight().clone()
    filt.snap_near_uniform()
    after = filt.unit_weight()
    torch.testing.assert_close(after[0, :, 0], torch.tensor([0.5, -0.5, 0.5, -0.5]))
    torch.testing.assert_close(after[1, :, 0], torch.tensor([1.0, 1.0, 1.0, 0.0]) / 3 ** 0.5)  # the pad stays 0
    torch.testing.assert_close(after[2], before[2])


def test_two_components_are_left_as_learnt():
    """Their sign patterns split the ties jointly: snapping a near-uniform column of two lost I(H;E) (docs/benchmarks-log.md)."""
    mask = torch.ones(1, 4, dtype=torch.bool)
    filt = _filter(torch.tensor([[[0.5, 0.23], [0.47, 0.7], [0.54, 0.11], [0.49, 0.66]]]), mask)
    before = filt.unit_weight().clone()
    filt.snap_near_uniform()
    assert torch.equal(filt.unit_weight(), before)


def test_a_real_valued_filter_is_left_as_learnt_and_a_shared_one_snaps():
    mask = torch.ones(3, 4, dtype=torch.bool)
    weight = torch.tensor([[[0.5], [0.45], [0.55], [0.52]]])
    real = _filter(weight.expand(3, -1, -1).clone(), mask, binarize=None)
    before = real.unit_weight().clone()
    real.snap_near_uniform()
    assert torch.equal(real.unit_weight(), before)
    shared = _filter(weight, mask)
    shared.snap_near_uniform()
    assert torch.equal(shared.linear_weights(), torch.full((3, 4, 1), 0.5))
    assert uniform_blocks(shared.linear_weights(), mask) == 3
    assert uniform_blocks(real.linear_weights(), mask) == 0


def test_a_real_valued_step_reports_no_uniform_blocks():
    """On continuous data (a Gaussian field) nothing is snapped, and ``info`` says so."""
    from experiments.gaussian_field import gaussian_field

    graph, _, x = gaussian_field(60, 2000, seed=0)
    regions = make_regions(graph, partition(graph, 4, seed=0), buffer=1, env=2)
    res = coarse_grain(x, regions, seed=0, steps=50)
    assert res.binarize is None and res.info["uniform_blocks"] == 0


def test_ising_blocks_send_every_tie_to_one_side():
    """Per-block filters on 2x2 blocks at T_c (real Swendsen-Wang samples): each is the uniform block spin exactly,
    so the coarse spin of every sample whose block sums to 0 is one value per block (the standardisation's means
    decide which); learnt weights differ by up to ~0.07 and split the ties by which sites are up."""
    L = 16
    x = sample_ising(L, T_CRITICAL, 3000, seed=0)
    regions = make_regions(lattice_graph(L), lattice_blocks(L, 2), buffer=1, env=1).select(list(range(0, 64, 4)))
    res = coarse_grain(x, regions, shared=False, seed=0)
    assert res.binarize == "straight-through"
    assert torch.equal(res.filters[..., 0], torch.full((16, 4), 0.5)) and res.info["uniform_blocks"] == 16
    h = res.transform(x)
    spins = x[:, regions.visible]  # [n, 16, 4]
    tie = spins.sum(-1) == 0
    for j in range(16):
        assert int(tie[:, j].sum()) > 100
        assert h[tie[:, j], j].unique().numel() == 1, j
        torch.testing.assert_close(h[~tie[:, j], j], spins[~tie[:, j], j].sum(-1).sign())  # the majority elsewhere


def test_auto_hidden_counts_the_snapped_one_component_blocks():
    """``hidden="auto"`` on spins: the blocks that keep one component carry the h = 1 step's snapped filter, and
    ``info["uniform_blocks"]`` counts them (blocks with more components are left as learnt)."""
    L = 16
    x = sample_ising(L, T_CRITICAL, 3000, seed=0)
    regions = make_regions(lattice_graph(L), lattice_blocks(L, 2), buffer=1, env=1).select(list(range(0, 64, 4)))
    res = coarse_grain(x, regions, hidden="auto", seed=0)
    one = res.hidden_per_block == 1
    assert res.binarize == "straight-through" and 0 < int(one.sum()) < 16  # measured: 2 blocks keep one component
    assert res.info["uniform_blocks"] == int(one.sum())
    assert torch.equal(res.filters[one, :, 0].abs(), torch.full((int(one.sum()), 4), 0.5))
