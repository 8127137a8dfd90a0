"""hidden="auto": the relevance spectrum finds how many components of a block carry information."""

import numpy as np
import pytest
import torch

from estimators import gaussian_mi
from graphs import ActivationGraph, make_regions
from rsmi_nn import coarse_grain
from rsmi_nn.relevance import choose_hidden, gaussian_ceiling

pytestmark = pytest.mark.usefixtures("one_thread")


def _planted_blocks(relevant=(1, 2, 3), n=6000, n_vis=6, n_env=12, noise=1.0, seed=0):
    """Blocks whose visible units share ``r`` independent latents with their environment (and nothing else).

    Nodes: the visible units of every block, then the environment units of every block; the graph joins
    each visible unit to its block's environment units. Returns samples, regions of the visible blocks,
    and the exact covariance.
    """
    rng = np.random.default_rng(seed)
    cols, vis_nodes, env_nodes = 0, [], []
    n_blocks = len(relevant)
    total_lat = sum(relevant)
    w = np.zeros((n_blocks * (n_vis + n_env), total_lat))
    for j, r in enumerate(relevant):
        v = np.arange(j * n_vis, (j + 1) * n_vis)
        e = n_blocks * n_vis + np.arange(j * n_env, (j + 1) * n_env)
        w[v, cols:cols + r] = rng.standard_normal((n_vis, r))
        w[e, cols:cols + r] = rng.standard_normal((n_env, r))
        vis_nodes.append(v)
        env_nodes.append(e)
        cols += r
    u = w.shape[0]
    x = rng.standard_normal((n, total_lat)) @ w.T + noise * rng.standard_normal((n, u))
    cov = w @ w.T + noise**2 * np.eye(u)
    src = np.concatenate([np.repeat(v, n_env) for v in vis_nodes])
    dst = np.concatenate([np.tile(e, n_vis) for e in env_nodes])
    edges = torch.from_numpy(np.stack([np.concatenate([src, dst]), np.concatenate([dst, src])]))
    graph = ActivationGraph([f"u{i}" for i in range(u)], edges)
    blocks = torch.empty(u, dtype=torch.long)
    for j, (v, e) in enumerate(zip(vis_nodes, env_nodes)):
        blocks[v], blocks[e] = j, n_blocks + j
    regions = make_regions(graph, blocks, buffer=0, env=1).select(range(n_blocks))
    return torch.from_numpy(x).float(), regions, cov, vis_nodes, env_nodes


def test_gaussian_ceiling_is_the_plug_in_mi():
    x, regions, cov, vis, env = _planted_blocks(n=20_000)
    z = (x - x.mean(0)) / x.std(0)
    got = gaussian_ceiling(z, regions)
    exact = [gaussian_mi(cov, v, e) for v, e in zip(vis, env)]
    # plug-in bias ~ |V||E| / 2N = 0.002 nats, sampling s.e. a few 0.01 at several nats
    assert got.numpy() == pytest.approx(exact, rel=0.03)


def test_choose_hidden_reads_where_the_spectrum_saturates():
    spectrum = torch.tensor([[1.0, 1.01, 1.02], [1.0, 2.0, 2.02], [0.5, 1.0, 1.5]], dtype=torch.float64)
    stderr = torch.full_like(spectrum, 0.01)
    ceiling = torch.tensor([1.05, 2.1, 1.6], dtype=torch.float64)
    assert choose_hidden(spectrum, stderr, ceiling).tolist() == [1, 2, 3]


def test_auto_finds_one_two_and_three_relevant_components():
    x, regions, _, _, _ = _planted_blocks()
    res = coarse_grain(x, regions, hidden="auto", steps=600, seed=0)
    assert res.hidden_per_block.tolist() == [1, 2, 3]
    assert res.hidden == 3 and res.filters.shape == (3, 6, 3)
    assert torch.all(res.filters[0, :, 1:] == 0) and torch.all(res.filters[1, :, 2:] == 0)
    spec, ceiling = res.info["relevance_spectrum"], res.info["mi_ceiling_gaussian"]
    assert spec.shape == (3, 4)
    # the chosen widths reach most of the independent ceiling; one component fewer does not
    chosen = spec.gather(1, (res.hidden_per_block - 1)[:, None]).squeeze(1)
    assert bool((chosen > 0.85 * ceiling).all())
    assert float(spec[1, 0]) < 0.8 * float(ceiling[1]) and float(spec[2, 1]) < 0.9 * float(ceiling[2])
    h = res.transform(x[:100])
    assert h.shape == (100, 9) and torch.all(h[:, [1, 2, 5]] == 0)


def test_integer_hidden_is_unchanged_and_has_no_per_block_widths():
    x, regions, _, _, _ = _planted_blocks(relevant=(1, 2))
    a = coarse_grain(x, regions, hidden=2, steps=100, seed=1)
    assert a.hidden_per_block is None and a.filters.shape == (2, 6, 2)
    with pytest.raises(ValueError, match="filter='linear'"):
        coarse_grain(x, regions, hidden="auto", filter="mlp", steps=10)
