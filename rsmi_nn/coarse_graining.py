"""One RSMI coarse-graining step: learn H_j = Λ_j(V_j) maximising I(H_j; E_j) for every block at once.

``coarse_grain(x, regions)`` is the functional form; ``CoarseGrainer(...).fit(x, regions)``
the scikit-learn-style one (``filters_``, ``mi_``, ``transform``). Both train all J blocks
as one batched program (see :mod:`rsmi_nn.training`) and report each block's MI on held-out
rows, in nats, with its standard error and the bound's ceiling (``log M`` for InfoNCE on M test rows).

Conventions, so filters are comparable across runs: the map acts on standardised inputs
``(x - mean) / std``; each filter column has unit norm over its block's units and its sign
makes the weights' sum positive (the largest-|w| entry when the sum is ~0).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field

import torch

from estimators.device import resolve_device
from estimators.validation import check_choice, check_positive_int, check_samples
from graphs.moments import ShiftedSums
from rsmi_nn.filters import LinearFilter, MLPFilter, binarize_modes, hard_sign
from rsmi_nn.training import TrainConfig, evaluate, gather, train_blocks

__all__ = ["CoarseGrainResult", "CoarseGrainer", "coarse_grain"]

log = logging.getLogger(__name__)


@dataclass
class CoarseGrainResult:
    """What one coarse-graining step learnt.

    Attributes
    ----------
    filters : Tensor of shape (n_blocks, max_visible, hidden)
        Weights on the block's standardised units (row order = ``regions.visible``), zero where
        padded; for an MLP filter, its mean Jacobian (a linear summary).
    mi : Tensor of shape (n_blocks,)
        Held-out I(H_j; E_j) in nats: the bound on the whole test split scored at once (never seen in
        training or model selection).
    mi_stderr : Tensor of shape (n_blocks,)
        Its batch-means standard error over 10 disjoint groups of test rows.
    mi_validation : Tensor of shape (n_blocks,)
        The best validation estimate each block's checkpoint was selected on.
    mi_ceiling : float
        The largest value the bound can report (``log n_test`` for InfoNCE, ``inf`` otherwise).
    mean, std : Tensor of shape (n_units,)
        The standardisation applied before the filters.
    visible, visible_mask : the regions' visible indices and mask ``[n_blocks, max_visible]``.
    """

    filters: torch.Tensor
    mi: torch.Tensor
    mi_stderr: torch.Tensor
    mi_validation: torch.Tensor
    mi_ceiling: float
    mean: torch.Tensor
    std: torch.Tensor
    visible: torch.Tensor
    visible_mask: torch.Tensor
    hidden: int
    bound: str
    binarize: str | None
    filter: str = "linear"
    model: torch.nn.Module | None = field(default=None, repr=False)
    info: dict = field(default_factory=dict)

    @property
    def num_blocks(self) -> int:
        return int(self.filters.shape[0])

    @torch.no_grad()
    def transform(self, x, *, chunk_size: int = 4096) -> torch.Tensor:
        """Coarse variables ``[N, J * hidden]`` (column ``j * hidden + c``) of samples ``x [N, U]``.

        Binarised filters give exactly ±1. Rows are processed in chunks (memory does not grow with N).
        """
        x = check_samples(x, name="x", min_samples=1, allow_constant=True)
        if x.shape[1] != self.mean.numel():
            raise ValueError(f"x has {x.shape[1]} units but the filters were fit on {self.mean.numel()}; "
                             "pass samples of the same units")
        dev = self.filters.device if self.model is None else next(self.model.buffers()).device
        mean, std = self.mean.to(dev), self.std.to(dev)
        vis, vm = self.visible.to(dev), self.visible_mask.to(dev).float()
        out = []
        for start in range(0, x.shape[0], chunk_size):
            z = (x[start:start + chunk_size].to(dev) - mean) / std
            v = gather(z, vis, vm)
            if self.model is not None:
                h = self.model(v, hard=True)
            else:
                h = torch.bmm(v, self.filters.to(dev))
                if self.binarize is not None:
                    h = hard_sign(h)
            out.append(h.permute(1, 0, 2).reshape(h.shape[1], -1).cpu())
        return torch.cat(out)


def _sign_convention(w: torch.Tensor) -> torch.Tensor:
    """±1 per (block, column) making the column sum positive (largest-|w| entry when the sum ~ 0)."""
    s = w.sum(dim=1)
    idx = w.abs().argmax(dim=1, keepdim=True)
    peak = torch.gather(w, 1, idx).squeeze(1)
    key = torch.where(s.abs() > 1e-6, s, peak)
    return torch.where(key < 0, -torch.ones_like(key), torch.ones_like(key))


def _check_regions(regions, n_units: int):
    for name in ("visible", "visible_mask", "environment", "environment_mask", "num_nodes", "empty_environment"):
        if not hasattr(regions, name):
            raise ValueError(f"regions must be a graphs.Regions (from graphs.make_regions), got {type(regions).__name__}")
    if regions.num_nodes != n_units:
        raise ValueError(f"x has {n_units} units but regions were built on a graph of {regions.num_nodes} nodes; "
                         "build the graph and regions from the same units as x")
    if regions.num_blocks == 0:
        raise ValueError("regions hold no blocks; check the partition")
    empty = torch.as_tensor(regions.empty_environment).reshape(-1)
    if empty.numel():
        shown = ", ".join(str(j) for j in empty[:10].tolist()) + (" ..." if empty.numel() > 10 else "")
        raise ValueError(f"{empty.numel()} block(s) have an empty environment (block {shown}); use a smaller buffer, "
                         "a larger env, or drop them with regions.select(...)")
    if not bool(regions.visible_mask.any(1).all()):
        raise ValueError("some blocks have no visible units; check the partition")


def coarse_grain(
    x,
    regions,
    hidden: int = 1,
    shared: bool = False,
    bound: str = "infonce",
    seed: int = 0,
    *,
    filter: str = "linear",
    binarize: bool | str = False,
    critic: str = "separable",
    critic_hidden: int = 32,
    critic_embed: int = 8,
    critic_layers: int = 2,
    critic_env_layers: int = 1,
    batch_size: int = 128,
    steps: int = 3000,
    lr: float = 3e-3,
    eval_every: int = 50,
    patience: int = 10,
    test_fraction: float = 0.2,
    validation_fraction: float = 0.1,
    anneal_steps: int = 1000,
    noise: float | None = None,
    allow_constant: bool = False,
    device: str | torch.device = "auto",
    progress: bool = False,
) -> CoarseGrainResult:
    """Learn the coarse variable ``H_j = Λ_j(V_j)`` of every block by maximising I(H_j; E_j).

    Parameters
    ----------
    x : Tensor or array of shape (n_samples, n_units)
    regions : graphs.Regions from ``graphs.make_regions`` on the samples' graph.
    hidden : components of H per block (h).
    shared : one filter for every block (homogeneous lattices; needs equal block sizes).
    bound : "infonce" (default), "nwj", "dv" or "smile" (``estimators.get_bound``).
    seed : seeds the split, the initialisation and the minibatches (same seed, same bytes).
    filter : "linear" (bias-free, unit-norm columns) or "mlp".
    binarize : False, True / "straight-through" (forward: a stochastic spin ``sign(pre + noise·logistic/2)``,
        backward: the gradient of ``tanh((pre + noise)/τ)``) or "anneal" (forward ``tanh((pre + noise)/τ)``);
        τ is decayed from 1 to 0.05 over ``anneal_steps`` inside the step. A binarised H is exactly ±1 at
        evaluation and in ``transform`` (deterministic: ``+1`` iff ``pre >= 0``).
    noise : scale of the logistic noise of a binarised H during training (default 2.0; the relaxed
        Bernoulli of RSMI-NE, ``P(H = +1) = sigmoid(2 pre / noise)``). It makes the objective smooth in
        the weights, so the learnt filter is identifiable (the uniform block spin on the Ising model at
        T_c) instead of any of the many weight vectors that realise the same threshold function; with
        noise 1.0 a 3-spin majority (one weight near 0) was found as a local optimum on some seeds.
    critic : "separable" (``estimators.SeparableCritic``, ``f(E, H) = <g(E), k(H)>``) or "concat".
    critic_hidden, critic_embed, critic_layers : the critic's width, embedding size and depth.
    critic_env_layers : depth of the separable critic's environment side ``g`` (1 = affine, the default):
        with ``k`` an MLP on the narrow H it is a logistic-regression-like critic. Measured on Gaussian
        fields (120 nodes, 6 000 samples): held-out MI / Gaussian plug-in on the same rows 0.977 ± 0.011
        with an affine ``g``, 0.943 ± 0.03 with a 2-layer one (which overfits the environment); filters
        within 0.2 % of the CCA optimum on average. Equal MI on Ising samples.
    batch_size, steps, lr : minibatch size, maximum steps, Adam learning rate. A step costs ~B² per block
        (the critic scores); B = 128 gave the same filters and held-out MI as 256 on Gaussian fields
        (filters 0.998 of the CCA optimum either way) and on Ising samples (2×2 at T_c: uniform, 0.368 vs
        0.367 nats) at a third of the step time. InfoNCE's training ceiling is then log 128 = 4.85 nats.
    eval_every, patience : validation interval (steps) and per-block early-stopping patience (evaluations).
    test_fraction : fraction of rows held out for the reported MI (never used in training or selection).
    validation_fraction : fraction of rows held out for early stopping and checkpoint selection.
    allow_constant : accept constant units (they are standardised to 0 and carry nothing).
    device : "auto" (CUDA when present), "cpu", "cuda".
    progress : tqdm bar over steps.

    Returns
    -------
    CoarseGrainResult with ``filters [J, max_visible, hidden]``, held-out ``mi [J]`` (nats),
    ``mi_ceiling``, ``mean``/``std [U]`` and ``transform(x) -> [N, J*hidden]``.
    """
    hidden = check_positive_int(hidden, name="hidden")
    seed = check_positive_int(seed, name="seed", minimum=0)
    batch_size = check_positive_int(batch_size, name="batch_size", minimum=2)
    steps = check_positive_int(steps, name="steps")
    eval_every = check_positive_int(eval_every, name="eval_every")
    patience = check_positive_int(patience, name="patience")
    check_choice(filter, ("linear", "mlp"), name="filter")
    check_choice(critic, ("separable", "concat"), name="critic")
    if binarize is True:
        binarize = "straight-through"
    mode = None if binarize is False or binarize is None else check_choice(binarize, binarize_modes, name="binarize")
    if not (0.0 < test_fraction and 0.0 < validation_fraction and test_fraction + validation_fraction < 1.0):
        raise ValueError(f"test_fraction={test_fraction} and validation_fraction={validation_fraction} must be "
                         "positive with a sum below 1; e.g. 0.2 and 0.1")
    if not (lr > 0 and math.isfinite(lr)):
        raise ValueError(f"lr={lr} must be a positive number; e.g. 3e-3")
    from estimators import get_bound
    from estimators.critics import CRITICS

    bound_obj = get_bound(bound)
    x = check_samples(x, name="x", min_samples=4, allow_constant=allow_constant)
    n, n_units = x.shape
    _check_regions(regions, n_units)
    n_val, n_test = round(validation_fraction * n), round(test_fraction * n)
    n_train = n - n_val - n_test
    if n_train < batch_size or min(n_val, n_test) < 16:
        frac = min(test_fraction, validation_fraction)
        need = max(math.ceil(16 / frac), math.ceil(batch_size / (1 - test_fraction - validation_fraction)))
        raise ValueError(f"x has {n} samples: {n_train} for training, {n_val} for validation and {n_test} for test "
                         f"(batch_size={batch_size}); pass at least {need} samples or lower batch_size")
    vis_sizes = regions.visible_mask.sum(1)
    if shared and bool((vis_sizes != vis_sizes[0]).any()):
        raise ValueError(f"shared=True needs blocks of equal size, got sizes {sorted(set(vis_sizes.tolist()))}; "
                         "use shared=False or a regular partition (lattice_blocks)")

    dev = resolve_device(device)
    gen = torch.Generator().manual_seed(seed)
    mean, std, z = _standardise(x)
    order = torch.randperm(n, generator=gen)
    z_train = z[order[:n_train]].to(dev)
    z_val = z[order[n_train:n_train + n_val]].to(dev)
    z_test = z[order[n_train + n_val:]].to(dev)
    del z

    vis = regions.visible.to(dev)
    vm = regions.visible_mask.to(dev)
    env = regions.environment.to(dev)
    em = regions.environment_mask.to(dev)
    regions_dev = (vis, vm.float(), env, em.float())
    n_blocks, max_v, max_env = vis.shape[0], vis.shape[1], env.shape[1]

    noise = (2.0 if mode is not None else 0.0) if noise is None else float(noise)
    if not (noise >= 0 and math.isfinite(noise)):
        raise ValueError(f"noise={noise} must be a finite number >= 0")
    common = {"binarize": mode, "anneal_steps": anneal_steps, "noise": noise, "generator": gen}
    if filter == "linear":
        filt = LinearFilter(n_blocks, max_v, hidden, vm, shared=shared, **common).to(dev)
    else:
        if shared:
            raise ValueError("shared=True is supported for filter='linear' only; use shared=False with 'mlp'")
        filt = MLPFilter(n_blocks, max_v, hidden, vm, **common).to(dev)
    critic_sides = {"x_layers": check_positive_int(critic_env_layers, name="critic_env_layers")} \
        if critic == "separable" else {}
    crit = CRITICS[critic](n_blocks, max_env, hidden, hidden=critic_hidden, embed=critic_embed,
                           layers=critic_layers, generator=gen, **critic_sides).to(dev)
    cfg = TrainConfig(batch_size=batch_size, steps=steps, lr=lr, eval_every=eval_every, patience=patience,
                      warmup_steps=anneal_steps if mode == "anneal" else 0, progress=progress)
    state = train_blocks(filt, crit, bound_obj, z_train, z_val, regions_dev, cfg, gen, shared=shared)
    mi, mi_stderr = evaluate(filt, crit, bound_obj, z_test, regions_dev)

    sample_v = gather(z_train[: min(n_train, 2048)], regions_dev[0], regions_dev[1])
    w = filt.linear_weights(sample_v)
    sign = _sign_convention(w)
    filt.flip(sign)
    w = filt.linear_weights(sample_v).cpu()
    filt.eval()
    info = {"steps_run": state.steps_run, "collapsed_blocks": state.collapsed, "history": state.history,
            "n_train": n_train, "n_validation": n_val, "n_test": n_test,
            "tau_final": float(filt.tau)}
    log.info("coarse_grain: %d blocks, %d steps, held-out MI mean %.4f nats (ceiling %.3f)",
             n_blocks, state.steps_run, float(mi.mean()), bound_obj.ceiling(n_test))
    return CoarseGrainResult(
        filters=w.contiguous(), mi=mi.cpu(), mi_stderr=mi_stderr.cpu(), mi_validation=state.best_val.cpu(),
        mi_ceiling=float(bound_obj.ceiling(n_test)), mean=mean.float(), std=std.float(),
        visible=regions.visible.cpu(), visible_mask=regions.visible_mask.cpu(), hidden=hidden,
        bound=bound_obj.name, binarize=mode, filter=filter, model=filt if filter == "mlp" else None, info=info)


def _standardise(x: torch.Tensor, chunk_elements: int = 2**18):
    """Per-unit mean and std (float64, ``ddof=1``; 1 for constant units) and the float32 standardised copy.

    Row chunk by row chunk: the peak is the float32 result plus a chunk, where a whole-array
    float64 formula held ~7 float32 copies of ``x`` at once (1.9 GB on a 128×128 lattice's 4 096
    samples).
    """
    n, u = x.shape
    rows = max(1, chunk_elements // u)
    sums = ShiftedSums(u, device=x.device)
    for a in range(0, n, rows):
        sums.update(x[a:a + rows])
    mean = sums.mean
    std = (sums.m2 / (n - 1)).sqrt()
    std = torch.where(std > 1e-12, std, torch.ones_like(std))
    z = torch.empty(n, u, dtype=torch.float32, device=x.device)
    for a in range(0, n, rows):
        z[a:a + rows] = ((x[a:a + rows].double() - mean) / std).float()
    return mean, std, z


class CoarseGrainer:
    """scikit-learn-style RSMI step: ``CoarseGrainer(hidden=1).fit(x, regions).transform(x)``.

    Parameters are those of :func:`coarse_grain`; learnt attributes: ``filters_``, ``mi_``,
    ``mi_ceiling_``, ``result_`` (the full :class:`CoarseGrainResult`).
    """

    def __init__(self, hidden: int = 1, shared: bool = False, bound: str = "infonce", seed: int = 0, **options):
        self.hidden, self.shared, self.bound, self.seed = hidden, shared, bound, seed
        self.options = options

    def fit(self, x, regions) -> CoarseGrainer:
        self.result_ = coarse_grain(x, regions, hidden=self.hidden, shared=self.shared, bound=self.bound,
                                    seed=self.seed, **self.options)
        self.filters_ = self.result_.filters
        self.mi_ = self.result_.mi
        self.mi_ceiling_ = self.result_.mi_ceiling
        return self

    def transform(self, x) -> torch.Tensor:
        if not hasattr(self, "result_"):
            raise ValueError("this CoarseGrainer is not fitted yet; call fit(x, regions) first")
        return self.result_.transform(x)

    def fit_transform(self, x, regions) -> torch.Tensor:
        return self.fit(x, regions).transform(x)
