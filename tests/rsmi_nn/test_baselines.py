"""The comparison methods: each agrees with an independent computation on generated data."""

import numpy as np
import pytest
import torch
from sklearn.decomposition import PCA

from rsmi_nn.baselines import BASELINES, fit_baseline

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def data():
    """Four blocks of five units; each block is one strong factor plus weak noise, on other scales."""
    gen = torch.Generator().manual_seed(0)
    factors = torch.randn(3000, 4, generator=gen)
    loadings = torch.rand(4, 5, generator=gen) + 0.5
    x = (factors[:, :, None] * loadings[None]).reshape(3000, 20) + 0.3 * torch.randn(3000, 20, generator=gen)
    x = x * torch.linspace(0.5, 5.0, 20) + 7.0  # units of other scales and offsets
    blocks = torch.arange(20) // 5
    return x, blocks, factors


def _standardised(x):
    return ((x - x.mean(0)) / x.std(0)).numpy()


def test_block_pca_matches_sklearn_per_block(data):
    x, blocks, factors = data
    enc = fit_baseline("block-pca", x, blocks)
    z = enc.encode(x)
    assert z.shape == (3000, 4)
    zs = _standardised(x.double())
    for j in range(4):
        ref = PCA(1).fit_transform(zs[:, blocks.numpy() == j])[:, 0]
        assert abs(np.corrcoef(ref, z[:, j].numpy())[0, 1]) > 0.9999
        assert abs(np.corrcoef(factors[:, j].numpy(), z[:, j].numpy())[0, 1]) > 0.95
    two = fit_baseline("block-pca", x, blocks, num_latents=8).encode(x)
    torch.testing.assert_close(two[:, ::2], z)  # the first component of each block comes first



def test_block_pca_of_uneven_blocks_is_each_blocks_own_eigenvectors(data):
    """All blocks in one batched eigh: blocks of 2 to 9 units, units in no block, more components than units."""
    x, _, _ = data
    blocks = torch.tensor([0, 0, -1, 1, 1, 1, 2, 2, 2, 2, 2, 2, 2, 2, 2, -1, 3, 3, 3, 3])
    w = fit_baseline("block-pca", x, blocks, num_latents=12).weight  # 3 components per block
    zs = _standardised(x.double())
    for j in range(4):
        units = (blocks == j).nonzero().flatten()
        evals, evecs = np.linalg.eigh(zs[:, units].T @ zs[:, units])
        ref = evecs[:, ::-1][:, :3]
        for c in range(3):
            col = w[:, 3 * j + c].numpy()
            assert not col[(blocks != j).numpy()].any()  # reads its own block only
            if c >= units.numel():
                assert not col.any()  # a block of 2 units has no third component
            else:
                assert abs(float(col[units.numpy()] @ ref[:, c])) > 1 - 1e-5
                assert col[np.abs(col).argmax()] > 0  # sign convention

def test_block_mean_is_the_mean_of_standardised_units(data):
    x, blocks, _ = data
    z = fit_baseline("block-mean", x, blocks).encode(x)
    zs = torch.from_numpy(_standardised(x.double()))
    torch.testing.assert_close(z.double(), zs.view(3000, 4, 5).mean(2), rtol=0, atol=1e-5)


def test_global_pca_spans_sklearns_components(data):
    x, _, _ = data
    z = fit_baseline("pca", x, num_latents=4).encode(x).numpy()
    ref = PCA(4).fit_transform(_standardised(x.double()))
    # the same subspace: regressing sklearn's scores on ours leaves nothing
    coef, *_ = np.linalg.lstsq(np.c_[z, np.ones(len(z))], ref, rcond=None)
    resid = ref - np.c_[z, np.ones(len(z))] @ coef
    assert (resid**2).sum() / (ref**2).sum() < 1e-8


def test_sae_learns_a_sparse_code_deterministically(data):
    x, _, _ = data
    enc = fit_baseline("sae", x, num_latents=16, sae_k=4, sae_steps=400, seed=3)
    z = enc.encode(x)
    assert z.shape == (3000, 16)
    assert int((z != 0).sum(1).max()) <= 4
    assert float((z > 0).any(0).float().mean()) > 0.5  # most latents are used
    # the code reconstructs the data far better than its mean does
    zs = torch.from_numpy(_standardised(x.double())).float()
    coef = torch.linalg.lstsq(torch.cat([z, torch.ones(3000, 1)], 1), zs).solution
    err = ((torch.cat([z, torch.ones(3000, 1)], 1) @ coef - zs) ** 2).sum() / (zs**2).sum()
    assert float(err) < 0.2
    again = fit_baseline("sae", x, num_latents=16, sae_k=4, sae_steps=400, seed=3).encode(x)
    assert torch.equal(z, again)


@pytest.mark.parametrize("call, message", [
    (lambda x, b: fit_baseline("ica", x, b), "unknown baseline"),
    (lambda x, b: fit_baseline("block-mean", x, None), "need blocks"),
    (lambda x, b: fit_baseline("block-pca", x, b[:5]), "5 entries"),
    (lambda x, b: fit_baseline("block-pca", x, b, num_latents=6), "multiple"),
    (lambda x, b: fit_baseline("pca", x), "num_latents"),
    (lambda x, b: fit_baseline("sae", x, num_latents=8, sae_k=9), "sae_k"),
])
def test_bad_requests_are_clear_errors(data, call, message):
    x, blocks, _ = data
    with pytest.raises(ValueError, match=message):
        call(x, blocks)


def test_every_baseline_is_listed():
    assert BASELINES == ("block-pca", "block-mean", "pca", "sae")
