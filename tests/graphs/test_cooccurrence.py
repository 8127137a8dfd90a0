"""Streaming moments and the tile-wise top-k graph against one-shot dense references."""

import logging
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from graphs import StreamingMoments, build_graph
from graphs.moments import ShiftedSums


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny matrix products: one thread avoids oversubscription on the shared test machine."""
    torch.set_num_threads(1)


def correlated(n=400, u=120, latent=12, seed=0, offset=0.0):
    rng = np.random.default_rng(seed)
    z = rng.standard_normal((n, latent))
    x = z @ rng.standard_normal((latent, u)) + rng.standard_normal((n, u))
    return (x + offset).astype(np.float32)


def uneven(x, sizes=(1, 7, 50, 3, 200)):
    out, start, i = [], 0, 0
    while start < len(x):
        stop = start + sizes[i % len(sizes)]
        out.append(x[start:stop])
        start, i = stop, i + 1
    return out


def test_streaming_moments_equal_one_shot():
    x = correlated(offset=1000.0).astype(np.float64)  # a large offset tests the stable update
    m = StreamingMoments(x.shape[1], gram=True)
    for b in uneven(x):
        m.update(torch.from_numpy(b))
    assert m.count == len(x)
    np.testing.assert_allclose(m.mean.numpy(), x.mean(0), rtol=0, atol=1e-9)
    np.testing.assert_allclose(m.var().numpy(), x.var(0), rtol=1e-9)
    np.testing.assert_allclose(m.covariance().numpy(), np.cov(x.T), rtol=0, atol=1e-6)
    np.testing.assert_allclose(m.correlation().numpy(), np.corrcoef(x.T), rtol=0, atol=1e-6)


def test_merge_of_shards_equals_one_shot():
    x = torch.from_numpy(correlated(u=30, seed=1)).double()
    a, b, whole = (StreamingMoments(30, threshold=0.0) for _ in range(3))
    a.update(x[:123])
    b.update(x[123:])
    whole.update(x)
    a.merge(b)
    assert torch.allclose(a.comoment, whole.comoment, atol=1e-8)
    assert torch.equal(a.coactive, whole.coactive) and torch.equal(a.active, whole.active)
    fired = (x > 0).double()
    p = fired.mean(0)
    pmi = torch.log((fired.T @ fired / len(x)) / torch.outer(p, p))
    assert torch.allclose(a.pmi(), pmi, atol=1e-10)


@pytest.mark.parametrize("windows", [1, 2, 5, 8, 13])
def test_moment_tree_gives_the_same_bits_for_any_split(windows):
    """What the ranks of a recording do: windows split into contiguous parts, each part's nodes merged at the end."""
    from graphs.moments import MomentTree

    x = torch.from_numpy(correlated(u=7, seed=4, offset=50.0)).double()[: 13 * windows]
    parts = list(torch.chunk(x, windows))

    def total(cuts):
        nodes = []
        for lo, hi in zip([0, *cuts], [*cuts, windows]):
            tree = MomentTree()
            for w in range(lo, hi):
                tree.add(w, StreamingMoments(7, gram=False).update(parts[w]))
            nodes += tree.nodes
        return MomentTree.total(nodes[::-1])  # any order of the holders' nodes

    one = total([])
    assert one.count == len(x)
    np.testing.assert_allclose(one.mean.numpy(), x.mean(0).numpy(), rtol=1e-13)
    np.testing.assert_allclose(one.var().numpy(), x.var(0, correction=0).numpy(), rtol=1e-11)
    assert torch.equal(one.min, x.min(0).values) and torch.equal(one.max, x.max(0).values)
    for cuts in ([1], [windows // 2], [windows - 1], list(range(1, windows))):
        cuts = sorted({c for c in cuts if 0 < c < windows})
        split = total(cuts)
        assert all(torch.equal(a, b) for a, b in zip(one.state().values(), split.state().values())), cuts
    back = StreamingMoments.from_state(one.state())
    assert torch.equal(back.var(), one.var()) and back.count == one.count


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_shifted_sums_equal_one_shot(dtype):
    x = correlated(u=25, seed=9, offset=3e3).astype(dtype)
    x[:, 0] = dtype(0.1)  # constant, and 0.1 is inexact: n·0.1/n need not round back to 0.1
    x[:, 1] = dtype(1.0)
    x[57, 1] = np.nextafter(dtype(1.0), dtype(2.0))  # one sample one ulp away: not constant
    s = ShiftedSums(25)
    for b in uneven(x):
        s.update(torch.from_numpy(b))
    ref = x.astype(np.float64)
    assert s.count == len(x)
    np.testing.assert_allclose(s.mean.numpy(), ref.mean(0), rtol=1e-13)
    np.testing.assert_allclose(s.var().numpy()[2:], ref.var(0)[2:], rtol=1e-9)
    assert s.constant_units().tolist() == [0]
    assert s.var()[1] > 0
    bad = torch.from_numpy(x[:5].copy())
    bad[2, 7] = np.inf
    part = s.update(bad)
    assert (~torch.isfinite(part)).nonzero().flatten().tolist() == [7]


def dense_scores(x, metric, threshold=None):
    xs = x.astype(np.float64)
    if metric == "pmi":
        thr = xs.mean(0) if threshold is None else threshold
        b = (xs > thr).astype(np.float64)
        c = b.sum(0)
        with np.errstate(divide="ignore"):
            s = np.log(b.T @ b * len(b) / np.outer(c, c))
    else:
        r = np.corrcoef(xs.T)
        s = np.abs(r) if metric == "corr" else -0.5 * np.log1p(-np.minimum(r * r, 1 - 1e-12))
    np.fill_diagonal(s, -np.inf)
    return s


def assert_topk_graph(g, scores, k):
    """Weights equal the dense scores, and each node's k best dense scores are realised by its edges."""
    ei = g.edge_index.numpy()
    ref = scores[ei[0], ei[1]]
    # float32 products over a few hundred samples: |error| ~ 1e-7, far below the gaps that decide rank
    np.testing.assert_allclose(g.edge_weight.numpy(), ref, rtol=0, atol=2e-6)
    for i in range(g.num_nodes):
        row = scores[i][np.isfinite(scores[i])]
        best = np.sort(row)[-k:]  # ties (PMI of counts) allowed: compare values, not identities
        got = np.sort(scores[i, g.neighbors(i).numpy()])[-k:]
        np.testing.assert_allclose(got, best, rtol=0, atol=2e-6)


@pytest.mark.parametrize("metric", ["corr", "pmi", "gaussian_mi"])
@pytest.mark.parametrize("tile_size,budget", [(None, 2**30), (7, 2**30), (16, 200_000)])
def test_tilewise_topk_equals_dense(metric, tile_size, budget):
    x = correlated(seed=2)
    k = 6
    g = build_graph(x, k, metric, tile_size=tile_size, memory_budget=budget, device="cpu")
    assert g.metadata["plan"]["mode"] == ("streamed" if budget < 2**20 else "resident")
    assert_topk_graph(g, dense_scores(x, metric), k)
    assert g.metadata["metric"] == metric and g.metadata["k"] == k


@pytest.mark.parametrize("budget", [2**30, 200_000])
def test_large_offset_keeps_precision(budget):
    x = correlated(seed=8).astype(np.float64) + 1e4  # mean/std ~ 1e3: a naive float32 centring loses digits
    g = build_graph(x, 5, memory_budget=budget, device="cpu")
    assert_topk_graph(g, dense_scores(x, "corr"), 5)


def test_pmi_with_given_threshold():
    x = correlated(seed=3)
    thr = np.quantile(x, 0.8, axis=0)
    g = build_graph(x, 4, "pmi", threshold=thr, tile_size=32, device="cpu")
    assert_topk_graph(g, dense_scores(x, "pmi", thr), 4)
    assert g.metadata["threshold"] == "per-unit"


class FakeStore:
    """Duck-typed ActivationStore: shards of uneven size streamed in order."""

    def __init__(self, x):
        self.x, self.num_samples, self.num_units = torch.from_numpy(x), x.shape[0], x.shape[1]
        self.names = [f"layer.0:{i}" for i in range(x.shape[1])]

    def iter_batches(self, batch_size=None):
        yield from uneven(self.x, sizes=(batch_size or 37, 5))


def test_store_array_and_tensor_inputs_agree(device):
    x = correlated(seed=4)
    ref = build_graph(x, 5, device="cpu")
    for src in (torch.from_numpy(x), FakeStore(x)):
        for budget in (2**30, 200_000):
            g = build_graph(src, 5, device=device, memory_budget=budget)
            assert torch.equal(g.edge_index, ref.edge_index)
            assert torch.allclose(g.edge_weight, ref.edge_weight, atol=1e-6)
    assert build_graph(FakeStore(x), 5, device="cpu").names[3] == "layer.0:3"
    again = build_graph(x, 5, device="cpu")
    assert again == ref  # deterministic: same input, same bytes


def test_constant_units_excluded_with_warning(caplog):
    x = correlated(u=40, seed=5)
    x[:, 3] = 0.0
    x[:, 17] = 2.5
    names = [f"n{i}" for i in range(40)]
    with caplog.at_level(logging.WARNING):
        g = build_graph(x, 4, names=names, device="cpu")
    assert "n3" in caplog.text and "n17" in caplog.text
    assert g.num_nodes == 38 and "n3" not in g.names
    assert g.metadata["excluded_units"] == [3, 17] and g.metadata["excluded_names"] == ["n3", "n17"]
    kept = g.metadata["unit_index"]
    assert_topk_graph(g, dense_scores(x[:, kept], "corr"), 4)


def test_k_larger_than_units_keeps_all_pairs():
    x = correlated(u=5, seed=6)
    g = build_graph(x, 16, device="cpu")
    assert g.num_edges == 5 * 4


def test_bad_input():
    x = correlated(u=10, n=50, seed=7)
    bad = x.copy()
    bad[3, 4] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        build_graph(bad)
    with pytest.raises(ValueError, match="2 dimensions"):
        build_graph(x[:, 0])
    with pytest.raises(ValueError, match="one name per column"):
        build_graph(x, names=["a"])
    with pytest.raises(ValueError, match="metric='mi' is not supported"):
        build_graph(x, metric="mi")
    with pytest.raises(ValueError, match="k must be >= 1"):
        build_graph(x, k=0)
    with pytest.raises(ValueError, match="threshold applies to metric='pmi'"):
        build_graph(x, threshold=0.0)
    with pytest.raises(ValueError, match="memory_budget=1000 bytes is too small"):
        build_graph(x, memory_budget=1000)
    with pytest.raises(ValueError, match="at least 2 are needed"):
        build_graph(x[:1])
    const = np.ones((20, 3), dtype=np.float32)
    const[:, 0] = np.arange(20)
    with pytest.raises(ValueError, match="at least 2 non-constant"):
        build_graph(const)
    with pytest.raises(ValueError, match="numeric"):
        build_graph(np.array([["a", "b"], ["c", "d"]]))
    late = correlated(u=10, n=700, seed=7).astype(np.float64)
    late[650, 2] = -np.inf  # in a later batch of the streamed mode too
    for budget in (2**30, 20_000):
        with pytest.raises(ValueError, match=r"NaN/Inf values \(first at index \(\d+, 2\)\)"):
            build_graph(late, memory_budget=budget)
    huge = correlated(u=10, n=50, seed=7).astype(np.float64)
    huge[5:, 1] = 1e39  # finite in float64, beyond float32 once the first sample is subtracted
    with pytest.raises(ValueError, match="float32's range"):
        build_graph(huge)
    with pytest.raises(ValueError, match="one per unit"):
        build_graph(x, metric="pmi", threshold=np.zeros(3))
    with pytest.raises(ValueError, match="max_gram_units"):
        StreamingMoments(10, gram=True, max_gram_units=5)


@pytest.mark.slow
def test_50k_units_within_memory_budget():
    """Issue 7: [4096, 50 000] float32, k=16 peaks below 6 GiB RSS (dense U×U alone is 10 GB)."""
    code = textwrap.dedent("""
        import numpy as np
        from benchmarks.peak import peak_rss_gib
        from graphs import build_graph
        x = np.random.default_rng(0).standard_normal((4096, 50_000), dtype=np.float32)
        g = build_graph(x, 16, device="cpu")
        assert g.num_nodes == 50_000 and int(g.degree().min()) >= 16
        print(peak_rss_gib())  # VmHWM: ru_maxrss would inherit this test process's peak
    """)
    root = Path(__file__).resolve().parents[2]
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True, cwd=root)
    peak_gib = float(out.stdout.strip().splitlines()[-1])
    assert peak_gib < 6.0, f"peak RSS {peak_gib:.2f} GiB"


def test_shifted_sums_reuse_one_buffer_with_the_bits_of_a_fresh_copy_per_batch():
    """Each batch is widened into one float64 buffer kept between updates: the sums have the bits of a fresh
    float64 copy per batch, and nothing returned earlier (a batch's squares, the shift) is a view of it."""
    x = torch.from_numpy(correlated(u=25, seed=3, offset=2.0).astype(np.float32))
    s = ShiftedSums(25)
    shift, s1, s2, parts = x[0].double(), torch.zeros(25, dtype=torch.float64), torch.zeros(25, dtype=torch.float64), []
    for b in uneven(x):
        d = b.to(torch.float64, copy=True).sub_(shift)
        s1 += d.sum(0)
        parts.append(d.square_().sum(0))
        s2 += parts[-1]
        assert torch.equal(s.update(b), parts[-1])
    assert torch.equal(s.shift, shift) and torch.equal(s.s1, s1) and torch.equal(s.s2, s2)
    kept = s.update(x[:3])
    s.update(x[-200:] * 7)  # a larger batch afterwards leaves what was returned alone
    assert torch.equal(kept, (x[:3].double() - shift).square().sum(0)) and torch.equal(s.shift, shift)
