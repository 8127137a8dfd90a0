"""Gathering blocks' rows into a reused buffer: the same values, and held-out passes that never read a stale chunk."""

import pytest
import torch

from estimators.bounds import get_bound
from estimators.device import Scratch
from graphs import lattice_blocks, lattice_graph, make_regions
from rsmi_nn.coarse_graining import _models
from rsmi_nn.options import StepOptions
from rsmi_nn.training import UnitMajor, evaluate, gather

pytestmark = pytest.mark.usefixtures("one_thread")


def test_a_gather_into_scratch_has_the_values_of_a_fresh_one():
    gen = torch.Generator().manual_seed(0)
    z = torch.randn(40, 9, generator=gen)
    index = torch.tensor([[0, 3, -1], [8, 8, 2], [-1, -1, 5]])
    scratch = Scratch()
    for rows in (z, UnitMajor.from_rows(z), UnitMajor.from_rows(z)[5:17]):
        assert torch.equal(gather(rows, index, scratch=scratch), gather(rows, index))
    padded = torch.cat([z, torch.zeros(40, 1)], dim=1)  # a pad reads zeros
    expected = padded[:, torch.where(index >= 0, index, 9)].permute(1, 0, 2)  # [J, B, m]
    assert torch.equal(gather(z, index, scratch=scratch), expected)


def test_scratch_hands_out_its_buffer_again_and_grows_when_asked_for_more():
    scratch, like = Scratch(), torch.zeros(1)
    big = scratch.take((4, 6), like)
    small = scratch.take((2, 3), like)
    assert small.is_contiguous() and small.data_ptr() == big.data_ptr()
    bigger = scratch.take((5, 6), like)
    assert bigger.shape == (5, 6) and bigger.data_ptr() != big.data_ptr()
    assert scratch.take((2, 2), torch.zeros(1, dtype=torch.float64)).dtype == torch.float64


def test_rows_transposed_into_scratch_are_those_transposed_afresh_in_one_reused_buffer():
    gen = torch.Generator().manual_seed(2)
    scratch = Scratch()
    first = UnitMajor.from_rows(torch.randn(30, 7, generator=gen), scratch)
    for n in (30, 11):  # a second chunk of rows, and a shorter last one, into the same buffer
        z = torch.randn(n, 7, generator=gen)
        into = UnitMajor.from_rows(z, scratch)
        assert torch.equal(into.t, UnitMajor.from_rows(z).t) and into.t.data_ptr() == first.t.data_ptr()
        assert torch.equal(into.t[:-1], z.t()) and not into.t[-1].any()  # the zero row the pads read


class _Fresh:
    """A new tensor at every request: what a :class:`Scratch` must be indistinguishable from."""

    def __init__(self, **_):
        pass

    def take(self, shape, like):
        return like.new_empty(shape)


def _held_out_problem(L: int, rows: int, env: int, seed: int, binarize: bool):
    """Standardised-like rows of an L x L lattice held unit-major, its 2x2 blocks' regions and fresh models."""
    gen = torch.Generator().manual_seed(seed)
    z = UnitMajor.from_rows(torch.randn(rows, L * L, generator=gen))
    regions = make_regions(lattice_graph(L), lattice_blocks(L, 2), buffer=1, env=env)
    dev = (regions.visible, regions.visible_mask.float(), regions.environment, regions.environment_mask.float())
    filt, critic = _models(StepOptions(binarize=binarize), dev, gen, torch.device("cpu"))
    return z, dev, filt, critic, regions.num_blocks


@pytest.mark.parametrize("binarize", [True, False])
def test_held_out_passes_read_each_chunk_of_environments_before_the_next(binarize):
    """Several chunks of rows (EMBED_ROWS and score chunks) through one buffer: the estimate has the bits of one
    gathered afresh for every chunk (a chunk kept past the next gather would read the next one's rows)."""
    z, dev, filt, critic, n_blocks = _held_out_problem(8, 700, env=2, seed=1, binarize=binarize)
    bound = get_bound("infonce")
    fresh = evaluate(filt, critic, bound, z, dev, columns=None, rows=96,
                     environment=lambda a, b: gather(z[a:b], dev[2]))
    reused = evaluate(filt, critic, bound, z, dev, columns=None, rows=96)
    assert all(torch.equal(a, b) for a, b in zip(fresh, reused))
    assert fresh[0].shape == (n_blocks,) and fresh[0].isfinite().all()


@pytest.mark.parametrize("binarize", [True, False])
def test_a_held_out_pass_through_its_buffer_has_the_bits_of_fresh_gathers(binarize, monkeypatch):
    """``evaluate``'s one buffer carries the visible rows (4 096 a chunk: two chunks here) and then the environments'
    chunks; the estimate is that of gathers made afresh each time."""
    import rsmi_nn.training as training

    z, dev, filt, critic, n_blocks = _held_out_problem(4, 4500, env=1, seed=3, binarize=binarize)
    bound = get_bound("infonce")
    reused = evaluate(filt, critic, bound, z, dev, rows=64)

    monkeypatch.setattr(training, "Scratch", _Fresh)
    fresh = evaluate(filt, critic, bound, z, dev, rows=64)
    assert all(torch.equal(a, b) for a, b in zip(fresh, reused))
    assert reused[0].shape == (n_blocks,) and reused[0].isfinite().all()


def test_per_block_training_through_its_step_buffers_has_the_bits_of_fresh_gathers(monkeypatch):
    """A per-block step's rows, visible units and environments go into buffers kept across steps (each step's read
    by its backward pass before the next step writes): the filters and MI of gathers made afresh at every step."""
    import rsmi_nn.training as training
    from rsmi_nn import coarse_grain

    L = 6
    x = torch.randn(600, L * L, generator=torch.Generator().manual_seed(4))
    regions = make_regions(lattice_graph(L), lattice_blocks(L, 2), buffer=1, env=2)
    run = dict(hidden=1, shared=False, seed=0, device="cpu", steps=60, eval_every=20)
    reused = coarse_grain(x, regions, **run)
    monkeypatch.setattr(training, "Scratch", _Fresh)
    fresh = coarse_grain(x, regions, **run)
    assert torch.equal(reused.filters, fresh.filters) and torch.equal(reused.mi, fresh.mi)
    assert reused.info["steps_run"] == 60
