"""The coarse variables of the methods RSMI is compared with, at the same number of latents.

Every method works on *standardised* units ``z = (x - mean) / std`` (std 1 for constant units), like
the RSMI filters, and is fitted on the samples it is given:

- ``"block-pca"``: the first ``h`` principal components of each block's units (``h = num_latents // J``);
- ``"block-mean"``: the mean of each block's units (one latent per block);
- ``"pca"``: ``num_latents`` dense principal components of all units;
- ``"sae"``: a TopK sparse autoencoder (Gao et al. 2024) with ``num_latents`` latents, ``k`` of them
  active per sample, trained with Adam on the reconstruction error through the project's one
  training loop (:func:`estimators.training.train_problems`), best validation checkpoint kept.

Signs are fixed (each component's largest-|loading| unit positive), so a fit is deterministic.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from functools import cached_property

import torch

from estimators.training import TrainSettings, train_problems
from estimators.validation import check_samples

__all__ = ["BASELINES", "Encoder", "Standardised", "fit_baseline", "standardise"]

BASELINES = ("block-pca", "block-mean", "pca", "sae")


@dataclass
class Encoder:
    """A fitted baseline: ``encode(x [N, U]) -> [N, num_latents]`` float32.

    Linear methods hold ``weight [U, J]`` on standardised units; the SAE also holds its encoder
    bias ``bias [J]``, decoder bias ``center [U]`` and ``k`` (latents kept per sample).
    """

    name: str
    mean: torch.Tensor
    std: torch.Tensor
    weight: torch.Tensor
    bias: torch.Tensor | None = None
    center: torch.Tensor | None = None
    k: int | None = None

    @property
    def num_latents(self) -> int:
        return int(self.weight.shape[1])

    @torch.no_grad()
    def encode(self, x, *, chunk_size: int = 8192) -> torch.Tensor:
        x = check_samples(x, name="x", min_samples=1, allow_constant=True)
        if x.shape[1] != self.mean.numel():
            raise ValueError(f"x has {x.shape[1]} units but the {self.name} baseline was fit on {self.mean.numel()}")
        mean, std = self.mean.float(), self.std.float()
        return torch.cat([self.latents((x[a:a + chunk_size].float() - mean) / std)
                          for a in range(0, x.shape[0], chunk_size)])

    def latents(self, z: torch.Tensor) -> torch.Tensor:
        """``[n, num_latents]`` of rows ``z [n, U]`` already standardised with this encoder's mean and std."""
        if self.k is not None:
            return _topk_relu((z - self.center) @ self.weight + self.bias, self.k)
        if self._sparse is None:
            return z @ self.weight
        return z @ self._sparse

    @cached_property
    def _sparse(self) -> torch.Tensor | None:
        """``weight`` as a sparse CSR tensor when at most 5 % of it is non-zero (the block methods), else None."""
        dense = bool((self.weight != 0).float().mean() > 0.05)
        if dense:
            return None
        with warnings.catch_warnings():  # torch calls its (long-standing) CSR support "beta"
            warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
            return self.weight.to_sparse_csr()


@dataclass
class Standardised:
    """Samples standardised once, to share between fits: float64 ``mean``, ``std`` ``[U]``, float32 ``z [N, U]``."""

    mean: torch.Tensor
    std: torch.Tensor
    z: torch.Tensor


def standardise(x) -> Standardised:
    """``(x - mean) / std`` per unit (std 1 for constant units), in float32 (torch's cascade sums: ~1e-7 relative)."""
    x = check_samples(x, name="x", min_samples=4, allow_constant=True).float()
    mean = x.mean(0)
    z = x - mean
    std = (z.pow(2).sum(0) / (x.shape[0] - 1)).sqrt()
    std = torch.where(std > 1e-6 * mean.abs().clamp_min(1e-6), std, torch.ones_like(std))
    return Standardised(mean.double(), std.double(), z.div_(std))


def fit_baseline(method: str, x, blocks: torch.Tensor | None = None, num_latents: int | None = None, *,
                 seed: int = 0, sae_k: int | None = None, sae_steps: int = 2000, progress: bool = False) -> Encoder:
    """Fit ``method`` (one of :data:`BASELINES`) on samples ``x [N, U]`` (or their :func:`standardise`).

    ``blocks`` (LongTensor ``[U]``, block id per unit, -1 = in no block) is needed by the block
    methods; ``num_latents`` by ``pca`` and ``sae`` (for ``block-pca`` it defaults to the number of
    blocks and must be a multiple of it). ``seed`` seeds the SAE's initialisation and minibatches.
    """
    if method not in BASELINES:
        raise ValueError(f"unknown baseline {method!r}; choose from {', '.join(BASELINES)}")
    data = x if isinstance(x, Standardised) else standardise(x)
    mean, std, z = data.mean, data.std, data.z
    n_units = z.shape[1]
    if method in ("block-pca", "block-mean"):
        members = _block_members(blocks, n_units)
        if method == "block-mean":
            weight = _block_mean_weight(members, n_units)
        else:
            weight = _block_pca_weight(z, members, _per_block(num_latents, len(members)))
        return Encoder(method, mean, std, weight)
    if num_latents is None or not 1 <= int(num_latents) <= n_units:
        raise ValueError(f"{method} needs num_latents in [1, {n_units}], got {num_latents}")
    if method == "pca":
        return Encoder(method, mean, std, _pca_weight(z, int(num_latents), seed))
    return _fit_sae(z, mean, std, int(num_latents), sae_k, sae_steps, seed, progress)


def _block_members(blocks, n_units: int) -> list[torch.Tensor]:
    if blocks is None:
        raise ValueError("block baselines need blocks: a LongTensor [U] with the block id of every unit")
    blocks = torch.as_tensor(blocks).long().reshape(-1)
    if blocks.numel() != n_units:
        raise ValueError(f"blocks has {blocks.numel()} entries but x has {n_units} units")
    ids = torch.unique(blocks[blocks >= 0])
    if ids.numel() == 0:
        raise ValueError("blocks assigns no unit to a block (all -1)")
    return [(blocks == b).nonzero().flatten() for b in ids.tolist()]


def _per_block(num_latents: int | None, n_blocks: int) -> int:
    if num_latents is None:
        return 1
    if num_latents < n_blocks or num_latents % n_blocks:
        raise ValueError(f"block-pca needs num_latents a positive multiple of the {n_blocks} blocks, got {num_latents}")
    return num_latents // n_blocks


def _fix_signs(w: torch.Tensor) -> torch.Tensor:
    """Flip each column (of the last two dimensions) so that its largest-|loading| entry is positive."""
    peak = w.gather(-2, w.abs().argmax(-2, keepdim=True))
    return w * torch.where(peak < 0, -1.0, 1.0)


def _block_mean_weight(members: list[torch.Tensor], n_units: int) -> torch.Tensor:
    w = torch.zeros(n_units, len(members))
    for j, m in enumerate(members):
        w[m, j] = 1.0 / m.numel()
    return w


def _block_pca_weight(z: torch.Tensor, members: list[torch.Tensor], h: int, *, chunk: int = 1024) -> torch.Tensor:
    """``[U, J*h]``: column ``j*h + c`` is component ``c`` of block ``j`` (zero past the block's size).

    Blocks of equal size at once: their ``[J_s, s, s]`` Gram matrices (float32 over row chunks, summed in
    float64) and one
    batched ``eigh`` per size; no padding, so the work is ``Σ_j s_j²`` per row.
    """
    n_blocks = len(members)
    sizes = torch.tensor([m.numel() for m in members])
    w = torch.zeros(z.shape[1], n_blocks * h)
    for size in torch.unique(sizes).tolist():
        ids = (sizes == size).nonzero().flatten()
        index = torch.stack([members[j] for j in ids.tolist()])              # [J_s, s]
        gram = torch.zeros(len(ids), size, size, dtype=torch.float64)
        for a in range(0, z.shape[0], chunk):
            zb = z[a:a + chunk][:, index]                                   # [n, J_s, s]
            gram += torch.einsum("nja,njb->jab", zb, zb).double()
        top = torch.linalg.eigh(gram)[1].flip(2)[:, :, :h]                 # [J_s, s, min(s, h)], largest first
        top = torch.nn.functional.pad(_fix_signs(top.float()), (0, h - top.shape[2]))
        cols = ids[:, None, None] * h + torch.arange(h)                     # [J_s, 1, h]
        w[index[:, :, None].expand(-1, -1, h), cols.expand(-1, size, -1)] = top
    return w


def _pca_weight(z: torch.Tensor, num_latents: int, seed: int) -> torch.Tensor:
    """The top ``num_latents`` right singular vectors of ``z`` (exact below 4 096, randomised above)."""
    zc = z - z.mean(0)
    if min(zc.shape) <= 4096:
        _, _, vh = torch.linalg.svd(zc.double(), full_matrices=False)
        v = vh[:num_latents].T.float()
    else:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            _, _, v = torch.svd_lowrank(zc, q=min(num_latents + 16, min(zc.shape)), niter=6)
        v = v[:, :num_latents]
    return _fix_signs(v)


def _topk_relu(pre: torch.Tensor, k: int) -> torch.Tensor:
    """Keep the ``k`` largest pre-activations of each row (ReLU'd), zero the rest."""
    vals, idx = pre.topk(k, dim=1)
    return torch.zeros_like(pre).scatter_(1, idx, vals.relu())


def _fit_sae(z, mean, std, num_latents: int, k: int | None, steps: int, seed: int, progress: bool) -> Encoder:
    """TopK SAE ``z ≈ topk(relu((z - c) W_e + b)) W_d + c``, decoder rows of unit norm; 10 % validation rows."""
    k = max(1, num_latents // 8) if k is None else int(k)
    if not 1 <= k <= num_latents:
        raise ValueError(f"sae_k must lie in [1, num_latents={num_latents}], got {k}")
    gen = torch.Generator().manual_seed(seed)
    order = torch.randperm(z.shape[0], generator=gen)
    n_val = max(2, z.shape[0] // 10)
    train, val = z[order[n_val:]], z[order[:n_val]]
    u = z.shape[1]
    dec = torch.randn(1, num_latents, u, generator=gen)
    dec = dec / dec.norm(dim=2, keepdim=True)
    params = [dec.clone().requires_grad_(True), dec.transpose(1, 2).clone().requires_grad_(True),
              torch.zeros(1, 1, num_latents, requires_grad=True), train.mean(0).view(1, 1, u).clone().requires_grad_(True)]
    w_dec, w_enc, b_enc, center = params

    def mse(rows: torch.Tensor) -> torch.Tensor:
        latents = _topk_relu((rows - center[0]) @ w_enc[0] + b_enc[0], k)
        return ((latents @ w_dec[0] + center[0] - rows) ** 2).sum(1).mean().view(1)

    def normalise() -> None:
        with torch.no_grad():
            w_dec.div_(w_dec.norm(dim=2, keepdim=True).clamp_min(1e-12))

    def validate():
        with torch.no_grad():
            loss = mse(val)
        return -loss, torch.zeros(1)

    settings = TrainSettings(batch_size=min(256, train.shape[0]), max_steps=steps, lr=1e-3, eval_every=50,
                             patience=8, min_delta=1e-4 * u, description="TopK SAE", progress=progress)
    train_problems(params, lambda rows: -mse(train[rows]), validate, train.shape[0], gen, settings,
                   on_step=normalise)
    normalise()
    return Encoder("sae", mean, std, w_enc[0].detach().clone(), bias=b_enc[0, 0].detach().clone(),
                   center=center[0, 0].detach().clone(), k=k)
