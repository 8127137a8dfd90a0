"""The canonical start (``init="cca"``, the default for linear filters): each block's filter begins at the linear
direction that maximises I(H;E) for Gaussian data."""

import numpy as np
import pytest
import torch

from experiments.gaussian_field import block_optima, filter_mi, gaussian_field
from experiments.ising2d import T_CRITICAL, sample_ising
from graphs import build_graph, lattice_blocks, lattice_graph, make_regions, partition
from rsmi_nn import coarse_grain
from rsmi_nn.filters import canonical_directions
from rsmi_nn.options import StepOptions

pytestmark = pytest.mark.usefixtures("one_thread")

UNTRAINED = {"steps": 1, "lr": 1e-9, "seed": 0}  # the kept filter is the start (one step of 1e-9)


def test_canonical_directions_solve_the_generalised_eigenproblem():
    """Two blocks, one padded: the top direction satisfies Σ_VE Σ_EE⁻¹ Σ_EV a = λ Σ_VV a; pads stay zero."""
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(500, 3, generator=gen) @ torch.randn(3, 3, generator=gen)
    e = a @ torch.randn(3, 4, generator=gen) + torch.randn(500, 4, generator=gen)
    v = torch.stack([a, torch.cat([a[:, :2], torch.zeros(500, 1)], 1)])  # block 1 has 2 units (+ a pad)
    env = torch.stack([e, e])
    cvv, cve, cee = (p.transpose(1, 2) @ q / 500 for p, q in ((v, v), (v, env), (env, env)))
    d = canonical_directions(cvv, cve, cee, 2, ridge=0.0).double()
    assert d.shape == (2, 3, 2) and float(d[1, 2].abs().max()) == 0.0
    torch.testing.assert_close(d.norm(dim=1), torch.ones(2, 2, dtype=torch.float64), rtol=0, atol=1e-6)
    for j, m in ((0, 3), (1, 2)):
        s_vv, s_ve, s_ee = cvv[j, :m, :m].double(), cve[j, :m].double(), cee[j].double()
        lhs = s_ve @ torch.linalg.solve(s_ee, s_ve.T)
        top = d[j, :m, 0]
        lam = float(top @ lhs @ top / (top @ s_vv @ top))
        torch.testing.assert_close(lhs @ top, lam * (s_vv @ top), rtol=1e-4, atol=1e-6)
        values = torch.linalg.eigvals(torch.linalg.solve(s_vv, lhs)).real
        assert lam == pytest.approx(float(values.max()), rel=1e-4)


def test_an_empty_environment_keeps_the_random_start():
    cvv = torch.eye(3).expand(2, 3, 3).clone()
    d = canonical_directions(cvv, torch.zeros(2, 3, 4), torch.zeros(2, 4, 4), 1)
    assert float(d.abs().max()) == 0.0  # zero columns: LinearFilter.start_at keeps the random weights


def test_duplicated_units_share_the_weight():
    """A singular Σ_VV (a unit recorded twice, or twice up to 1e-3 of noise) neither fails nor splits the weight."""
    gen = torch.Generator().manual_seed(0)
    f = torch.randn(3000, 2, generator=gen)
    f[:, 1] = 0.6 * f[:, 0] + 0.8 * f[:, 1]
    x = torch.cat([f[:, :1] + 0.3 * torch.randn(3000, 3, generator=gen),
                   f[:, 1:] + 0.3 * torch.randn(3000, 4, generator=gen)], 1)
    for twin in (x[:, :1], x[:, :1] + 1e-3 * torch.randn(3000, 1, generator=gen)):
        data = torch.cat([x[:, :1], twin, x[:, 1:]], 1)
        regions = make_regions(build_graph(data, k=4), torch.arange(8) // 4, buffer=0, env=1)
        w = coarse_grain(data, regions, init="cca", **UNTRAINED).filters[:, :, 0]
        assert bool(torch.isfinite(w).all()) and float(w[0, 0]) == pytest.approx(float(w[0, 1]), abs=1e-3), w
        assert bool((w[0] > 0.2).all()), w  # every unit of the block reads its factor


def test_cca_start_is_the_gaussian_fields_optimum_before_any_training():
    """On a Gaussian field the start alone is within 1 % of the exact CCA optimum in every block (sample moments
    of ~2 800 rows); a random start is not."""
    graph, cov, x = gaussian_field(24, 4000, seed=3, mass=0.25)
    regions = make_regions(graph, partition(graph, 4, seed=0), buffer=1, env=1)
    optimum = block_optima(cov, regions)
    start = filter_mi(cov, regions, coarse_grain(x, regions, init="cca", **UNTRAINED)) / optimum
    random = filter_mi(cov, regions, coarse_grain(x, regions, init="random", **UNTRAINED)) / optimum
    assert start.min() > 0.99, start
    assert random.min() < 0.9, random


def test_shared_cca_start_on_spins_is_the_block_spin():
    """The pooled moments of 2×2 Ising blocks at T_c give the uniform filter (RSMI's block spin) at once."""
    x = sample_ising(8, T_CRITICAL, 1500, seed=0)
    regions = make_regions(lattice_graph(8), lattice_blocks(8, 2), buffer=1, env=1)
    w = coarse_grain(x, regions, shared=True, init="cca", **UNTRAINED).filters[0, :, 0].abs()
    assert float(w @ torch.full((4,), 0.5)) > 0.995, w


def test_auto_is_cca_for_linear_filters_and_random_for_mlps():
    assert StepOptions().start == "cca"
    assert StepOptions(filter="mlp").start == "random"
    assert StepOptions(init="pca").start == "pca"
    with pytest.raises(ValueError, match="init='cca' starts a linear filter"):
        StepOptions(init="cca", filter="mlp")
    x = torch.randn(600, 8)
    regions = make_regions(build_graph(x, k=3), torch.arange(8) // 4, buffer=0, env=1)
    res = coarse_grain(x, regions, filter="mlp", steps=2, eval_every=1)  # the default runs with an MLP filter
    assert np.isfinite(res.mi.numpy()).all()
