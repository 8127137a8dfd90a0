"""One RSMI coarse-graining step: learn H_j = Λ_j(V_j) maximising I(H_j; E_j) for every block at once.

``coarse_grain(x, regions)`` is the functional form; ``CoarseGrainer(...).fit(x, regions)``
the scikit-learn-style one (``filters_``, ``mi_``, ``transform``). Both train all J blocks as one
batched program (:mod:`rsmi_nn.training` on the one loop of :mod:`estimators.training`) and report
each block's MI on held-out rows, in nats, with its standard error and the bound's ceiling
(``log K`` for InfoNCE, each of the test rows scored against K = min(M, ~1 024) of them).

Conventions, so filters are comparable across runs: the map acts on standardised inputs
``(x - mean) / std``; each filter column has unit norm over its block's units and its sign
makes the weights' sum positive (the largest-|w| entry when the sum is ~0).

``shared=True`` (one filter for all blocks) trains one critic for all blocks as well, on a few blocks' rows
per step, each environment read through per-site keys (:mod:`rsmi_nn.shared_step`); each block's held-out MI is
then scored on a bounded number of test rows (:func:`rsmi_nn.shared_step.test_rows`, ceiling ``log 256``).

Inside a ``torch.distributed`` process group each rank trains and tests its share of the blocks and every
rank returns the result of one process (:mod:`rsmi_nn.distributed`).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field

import torch

from estimators.device import Scratch, resolve_device
from estimators.heldout import chunk_rows
from estimators.training import TrainSettings
from estimators.validation import check_positive_int, check_samples
from graphs.distributed import agreed
from rsmi_nn.distributed import block_share, gather_blocks, gather_values, only_blocks
from rsmi_nn.filters import LinearFilter, MLPFilter, decide_binarize, hard_sign, uniform_blocks
from rsmi_nn.options import StepOptions
from rsmi_nn.shared_step import SHARED_TEST_COLUMNS, test_rows, train_shared
from rsmi_nn.standardising import standardised_splits
from rsmi_nn.training import (
    TEST_COLUMNS,
    UnitMajor,
    after_refit,
    evaluate,
    frozen,
    gather,
    refit_generator,
    refit_settings,
    refits_critic,
    train_blocks,
    warm_start,
)

__all__ = ["CoarseGrainResult", "CoarseGrainer", "check_step", "coarse_grain"]

log = logging.getLogger(__name__)

# :meth:`CoarseGrainResult.transform`'s gathered blocks per chunk of rows, at most. One chunk of 4 096 rows of the
# default run's level 0 gathered 4 096 x 1 321 blocks x 25 units = 0.54 GB afresh: 0.75-6.3 s for its 6 151 rows
# (page faults), 0.4-0.65 s in reused buffers of 4-64 MiB; 128 MiB 1.2 s (2-core Zen 4 VM, 2026-12-03).
TRANSFORM_CHUNK_BYTES = 32 << 20


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
        Its batch-means standard error over 10 disjoint groups of test rows. Each test row is scored against
        the rows of its group of at most ``rsmi_nn.training.TEST_COLUMNS`` (1 024): the cost is bounded
        (``n_blocks * n_test * 1024`` scores), every test row counts.
    mi_validation : Tensor of shape (n_blocks,)
        The best validation estimate each block's checkpoint was selected on.
    mi_ceiling : float
        The largest value the bound can report (InfoNCE: ``log`` of the test rows a row is scored against,
        ``min(n_test, ~1024)``; ``inf`` for the other bounds).
    mean, std : Tensor of shape (n_units,)
        The standardisation applied before the filters.
    visible, visible_mask : the regions' visible indices and mask ``[n_blocks, max_visible]``.
    info : dict
        How it trained: ``steps_run``, ``history``, ``critic_refit_steps``, ``collapsed_blocks``, the splits' sizes,
        and ``uniform_blocks``: the blocks whose binarised one-component filter was made exactly uniform after
        training (:meth:`rsmi_nn.filters.LinearFilter.snap_near_uniform`).
    hidden_per_block : LongTensor of shape (n_blocks,), or None
        With ``hidden="auto"``: the components block ``j`` keeps (its filter columns ``h_j …`` are zero, so
        those coarse variables are constant 0 and a flow drops them); None when every block has ``hidden``.
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
    hidden_per_block: torch.Tensor | None = None  # [J] components per block (hidden="auto"; None: ``hidden`` each)

    @property
    def num_blocks(self) -> int:
        return int(self.filters.shape[0])

    @torch.no_grad()
    def transform(self, x, *, chunk_size: int = 4096) -> torch.Tensor:
        """Coarse variables ``[N, J * hidden]`` (column ``j * hidden + c``) of samples ``x [N, U]``.

        Binarised filters give exactly ±1. Rows are processed in chunks of at most ``chunk_size``, fewer where the
        chunk's gathered blocks would pass :data:`TRANSFORM_CHUNK_BYTES` (memory does not grow with N). The filters
        are evaluated in float64 and rounded once, so a row's numbers do not depend on the chunking (float32
        products did on AVX-512 CPUs, whose MKL kernels round otherwise at other row counts).
        """
        x = check_samples(x, name="x", min_samples=1, allow_constant=True)
        if x.shape[1] != self.mean.numel():
            raise ValueError(f"x has {x.shape[1]} units but the filters were fit on {self.mean.numel()}; "
                             "pass samples of the same units")
        chunk_size = check_positive_int(chunk_size, name="chunk_size")
        dev = self.filters.device if self.model is None else next(self.model.buffers()).device
        mean, std, vis = self.mean.to(dev), self.std.to(dev), self.visible.to(dev)
        evaluate, wide = self._float64_filters(dev), torch.empty((), dtype=torch.float64, device=dev)
        rows = max(1, min(chunk_size, TRANSFORM_CHUNK_BYTES // (vis.numel() * (x.element_size() + 8))))  # + float64
        out = None
        z_buf, unit_major, gathered, wide_v = Scratch(), Scratch(), Scratch(), Scratch()  # reused: faulted in once
        for start in range(0, x.shape[0], rows):
            chunk = x[start:start + rows].to(dev)
            z = torch.sub(chunk, mean, out=z_buf.take(chunk.shape, chunk)).div_(std)
            v = gather(UnitMajor.from_rows(z, unit_major), vis, scratch=gathered)
            # the float64 copy in a reused buffer: a fresh one a chunk cost 27 ms against 1.4 ms (1 321 blocks x 84
            # rows x 25 units, Intel AVX-512 VM, 2026-12-05)
            h = evaluate(wide_v.take(v.shape, wide).copy_(v)).to(v.dtype)
            if out is None:
                out = torch.empty(x.shape[0], *h.shape[::2], dtype=h.dtype)
            out[start:start + rows].copy_(h.transpose(0, 1))
        return out.view(x.shape[0], -1)

    def _float64_filters(self, dev: torch.device):
        """``v [J, rows, max_visible]`` (float64) -> H ``[J, rows, hidden]`` (float64): the linear filters'
        products, or the MLP filter run on float64 copies of its weights; binarised H is exactly ±1."""
        if self.model is None:
            w = self.filters.to(dev, torch.float64)
            return lambda v: torch.bmm(v, w) if self.binarize is None else hard_sign(torch.bmm(v, w))
        state = {name: t.double() if t.is_floating_point() else t
                 for name, t in [*self.model.named_parameters(), *self.model.named_buffers()]}
        return lambda v: torch.func.functional_call(self.model, state, (v,), {"hard": True})


def _sign_convention(w: torch.Tensor) -> torch.Tensor:
    """±1 per (block, column) making the column sum positive (largest-|w| entry when the sum ~ 0)."""
    s = w.sum(dim=1)
    idx = w.abs().argmax(dim=1, keepdim=True)
    peak = torch.gather(w, 1, idx).squeeze(1)
    key = torch.where(s.abs() > 1e-6, s, peak)
    return torch.where(key < 0, -torch.ones_like(key), torch.ones_like(key))


def _check_regions(regions, n_units: int, shared: bool = False):
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
        isolated = torch.as_tensor(getattr(regions, "isolated", torch.zeros(0))).reshape(-1)
        if bool(torch.isin(empty, isolated).all()):
            raise ValueError(f"{empty.numel()} block(s) have an empty environment (block {shown}): no edge leaves them "
                             "(each is a whole connected component of the graph), so no buffer or env width can help; "
                             "use a smaller block_size, a denser graph (larger k), or drop them with regions.select(...)")
        raise ValueError(f"{empty.numel()} block(s) have an empty environment (block {shown}); use a smaller buffer, "
                         "a larger env, or drop them with regions.select(...)")
    if not bool(regions.visible_mask.any(1).all()):
        raise ValueError("some blocks have no visible units; check the partition")
    sizes = regions.visible_mask.sum(1)
    if shared and bool((sizes != sizes[0]).any()):
        raise ValueError(f"shared=True needs blocks of equal size, got sizes {sorted(set(sizes.tolist()))}; "
                         "use shared=False or a regular partition (lattice_blocks)")


def coarse_grain(x, regions, options: StepOptions | None = None, *, seed: int = 0, device: str | torch.device = "auto",
                 progress: bool = False, allow_constant: bool = False, **overrides) -> CoarseGrainResult:
    """Learn the coarse variable ``H_j = Λ_j(V_j)`` of every block by maximising I(H_j; E_j).

    Parameters
    ----------
    x : Tensor or array of shape (n_samples, n_units)
    regions : graphs.Regions from ``graphs.make_regions`` on the samples' graph.
    options : :class:`rsmi_nn.options.StepOptions`; ``**overrides`` set any of its options by name
        (``hidden``, ``shared``, ``bound``, ``binarize``, ``steps``, ``batch_size``, ``critic_env_layers``, ...;
        each is documented there). ``bound`` may also be an ``estimators.Bound`` instance.
        ``hidden="auto"`` picks the number of components block by block from its relevance spectrum
        (:mod:`rsmi_nn.relevance`: one step per ``h = 1..4``; ``result.hidden_per_block``).
    seed : seeds the split, the initialisation and the minibatches (same seed, same bytes).
    device : "auto" (CUDA when present), "cpu", "cuda".
    progress : tqdm bar over steps.
    allow_constant : accept constant units (they are standardised to 0 and carry nothing).

    Returns
    -------
    CoarseGrainResult with ``filters [J, max_visible, hidden]``, held-out ``mi [J]`` (nats),
    ``mi_ceiling``, ``mean``/``std [U]`` and ``transform(x) -> [N, J*hidden]``.
    """
    from estimators.bounds import Bound, get_bound

    if options is not None and not isinstance(options, StepOptions):
        raise TypeError(f"options must be a rsmi_nn.options.StepOptions, got {type(options).__name__}; "
                        "pass hidden, shared, ... as keywords")
    custom = overrides.pop("bound") if isinstance(overrides.get("bound"), Bound) else None
    auto = isinstance(overrides.get("hidden"), str) and overrides["hidden"] == "auto"
    if auto:
        overrides.pop("hidden")
    opts = (options or StepOptions()).replace(**overrides)
    seed = check_positive_int(seed, name="seed", minimum=0)
    x, extremes = check_samples(x, name="x", min_samples=4, allow_constant=allow_constant, return_range=True)
    opts = decide_binarize(opts, x, extremes)
    if auto:
        from rsmi_nn.relevance import auto_coarse_grain

        return auto_coarse_grain(x, regions, opts, seed=seed, device=device, progress=progress,
                                 allow_constant=allow_constant, bound=custom)
    bound = custom if custom is not None else get_bound(opts.bound)
    n_train, n_val, n_test = check_step(x.shape[0], x.shape[1], regions, opts)

    dev = resolve_device(device)
    gen = torch.Generator().manual_seed(seed)
    order = torch.randperm(x.shape[0], generator=gen)
    mean, std, z_train, z_val, z_test = standardised_splits(x, order, n_train, n_val)
    z_train, z_val, z_test = z_train.to(dev), z_val.to(dev), z_test.to(dev)
    regions_dev = (regions.visible.to(dev), regions.visible_mask.to(dev).float(),
                   regions.environment.to(dev), regions.environment_mask.to(dev).float())
    settings = TrainSettings(batch_size=opts.batch_size, max_steps=opts.steps, lr=opts.lr,
                             eval_every=opts.validation_steps, patience=opts.stopping_patience,
                             min_delta=opts.stopping_delta,
                             description="RSMI blocks",
                             warmup_steps=opts.anneal_steps if opts.binarize == "anneal" else 0, progress=progress)
    keyed = _keyed(opts, bound)
    if keyed:  # one filter and one critic for all blocks (rsmi_nn.shared_step)
        filt = _models(opts, regions_dev, gen, dev, critic=False)
        warm_start(filt, opts, z_train, regions_dev)
        with agreed("the RSMI step's training"):
            crit, state = train_shared(filt, opts, bound, z_train, z_val, regions_dev, settings, gen)
            filt.snap_near_uniform()
            if refits_critic(opts):
                with frozen(filt):
                    crit, refit = train_shared(filt, opts, bound, z_train, z_val, regions_dev,
                                               refit_settings(settings, shared=True), refit_generator(seed), critic=crit)
                state = after_refit(state, refit)
        state.best_val = state.best_val.expand(regions.num_blocks)  # one value: the validation blocks' mean
    else:
        filt, crit = _models(opts, regions_dev, gen, dev)
        warm_start(filt, opts, z_train, regions_dev)
        blocks = block_share(regions.num_blocks, coupled=opts.shared)  # this rank's share; None: all (one process)
        with agreed("the RSMI step's training"):
            state = train_blocks(filt, crit, bound, z_train, z_val, regions_dev, settings, gen, blocks)
            filt.snap_near_uniform()
            if refits_critic(opts):
                regen = refit_generator(seed)  # the training critic, each block at its best checkpoint, goes on
                with frozen(filt):
                    refit = train_blocks(filt, crit, bound, z_train, z_val, regions_dev, refit_settings(settings), regen,
                                         blocks)
                state = after_refit(state, refit)
        state = gather_blocks([filt, crit], state, blocks, regions.num_blocks)
    if keyed:  # bounded: rsmi_nn.shared_step.test_rows
        n_scored, columns = test_rows(n_test, regions.num_blocks), SHARED_TEST_COLUMNS
        with agreed("the held-out test"):
            mi, mi_stderr = evaluate(filt, crit, bound, z_test[:n_scored], regions_dev, columns=columns)
    else:
        n_scored, columns = n_test, TEST_COLUMNS
        rows = chunk_rows(crit, regions.num_blocks, min(n_test, TEST_COLUMNS))  # the same chunks on any share
        with only_blocks([filt, crit], regions_dev, blocks) as share_regions, agreed("the held-out test"):
            mi, mi_stderr = evaluate(filt, crit, bound, z_test, share_regions, columns=TEST_COLUMNS, rows=rows)
        mi, mi_stderr = gather_values(blocks, mi, mi_stderr)
    ceiling = float(bound.ceiling(_scored_columns(n_scored, columns)))

    # an MLP filter's linear summary is its mean Jacobian over these rows; a linear filter's weights are its own (the
    # default run's level 0 gathered 1 321 x 25 x 2 048 values for nothing: 0.4 s on this 2-core VM)
    sample_v = gather(z_train[: min(n_train, 2048)], regions_dev[0], regions_dev[1]) if opts.filter == "mlp" else None
    filt.flip(_sign_convention(filt.linear_weights(sample_v)))
    w = filt.linear_weights(sample_v).cpu()
    filt.eval()
    info = {"steps_run": state.steps_run, "collapsed_blocks": state.collapsed, "history": state.history,
            "critic_refit_steps": refit.steps_run if refits_critic(opts) else 0,
            "uniform_blocks": uniform_blocks(w, regions.visible_mask) if opts.binarize and opts.filter == "linear" else 0,
            "n_train": n_train, "n_validation": n_val, "n_test": n_test, "tau_final": float(filt.tau)}
    log.info("coarse_grain: %d blocks, %d steps, held-out MI mean %.4f nats (ceiling %.3f)%s",
             regions.num_blocks, state.steps_run, float(mi.mean()), ceiling,
             f"; {info['uniform_blocks']} binarised filter(s) made exactly uniform" if info["uniform_blocks"] else "")
    return CoarseGrainResult(
        filters=w.contiguous(), mi=mi.cpu(), mi_stderr=mi_stderr.cpu(), mi_validation=state.best_val.cpu(),
        mi_ceiling=ceiling, mean=mean.float(), std=std.float(),
        visible=regions.visible.cpu(), visible_mask=regions.visible_mask.cpu(), hidden=opts.hidden,
        bound=bound.name, binarize=opts.binarize, filter=opts.filter, model=filt if opts.filter == "mlp" else None,
        info=info)


def _scored_columns(n_test: int, columns: int = TEST_COLUMNS) -> int:
    """Columns each test row is scored against (the smallest group of ``columns`` rows, by default
    :data:`rsmi_nn.training.TEST_COLUMNS`): InfoNCE's ceiling is its log."""
    from estimators.heldout import group_edges

    edges = group_edges(n_test, columns)
    return min(b - a for a, b in zip(edges, edges[1:]))


def check_step(n_samples: int, n_units: int, regions, options: StepOptions) -> tuple[int, int, int]:
    """Check that a step on ``[n_samples, n_units]`` with ``regions`` can run (before anything is trained or
    written); returns the training, validation and test row counts."""
    _check_regions(regions, n_units, options.shared)
    return _split_sizes(n_samples, options)


def _split_sizes(n: int, opts: StepOptions) -> tuple[int, int, int]:
    """Rows for training, validation and test; too few for the batch or for a held-out estimate is an error."""
    n_val, n_test = round(opts.validation_fraction * n), round(opts.test_fraction * n)
    n_train = n - n_val - n_test
    if n_train < opts.batch_size or min(n_val, n_test) < 16:
        frac = min(opts.test_fraction, opts.validation_fraction)
        need = max(math.ceil(16 / frac), math.ceil(opts.batch_size / (1 - opts.test_fraction - opts.validation_fraction)))
        raise ValueError(f"x has {n} samples: {n_train} for training, {n_val} for validation and {n_test} for test "
                         f"(batch_size={opts.batch_size}); pass at least {need} samples or lower batch_size")
    return n_train, n_val, n_test


def _keyed(opts: StepOptions, bound) -> bool:
    """Whether the step trains one keyed critic for all blocks (:mod:`rsmi_nn.shared_step`): a shared filter,
    a separable critic and InfoNCE's own objective."""
    from estimators.bounds import InfoNCEBound

    own = isinstance(bound, InfoNCEBound) and type(bound).objective is InfoNCEBound.objective
    return opts.shared and opts.critic == "separable" and own


def _critic(opts: StepOptions, regions_dev, gen: torch.Generator, dev):
    """A fresh critic for the blocks, initialised from ``gen``."""
    from estimators.critics import CRITICS

    vis, env = regions_dev[0], regions_dev[2]
    sides = {"x_layers": opts.critic_env_layers} if opts.critic == "separable" else {}
    return CRITICS[opts.critic](vis.shape[0], env.shape[1], opts.hidden, hidden=opts.critic_hidden,
                                embed=opts.critic_embed, layers=opts.critic_layers, generator=gen, **sides).to(dev)


def _models(opts: StepOptions, regions_dev, gen: torch.Generator, dev, critic: bool = True):
    """The blocks' filter and critic, initialised from ``gen`` (filter first: the order fixes the bytes);
    the filter alone when not ``critic``."""
    vis, vm = regions_dev[0], regions_dev[1]
    n_blocks, max_v = vis.shape[0], vis.shape[1]
    common = {"binarize": opts.binarize, "anneal_steps": opts.anneal_steps, "noise": opts.noise_scale, "generator": gen}
    if opts.filter == "linear":
        filt = LinearFilter(n_blocks, max_v, opts.hidden, vm.bool(), shared=opts.shared, **common).to(dev)
    else:
        filt = MLPFilter(n_blocks, max_v, opts.hidden, vm.bool(), **common).to(dev)
    if not critic:
        return filt
    return filt, _critic(opts, regions_dev, gen, dev)


class CoarseGrainer:
    """scikit-learn-style RSMI step: ``CoarseGrainer(hidden=1).fit(x, regions).transform(x)``.

    Parameters are those of :func:`coarse_grain` (a :class:`~rsmi_nn.options.StepOptions` and/or its
    options by name); learnt attributes: ``filters_``, ``mi_``, ``mi_ceiling_``, ``result_`` (the full
    :class:`CoarseGrainResult`).
    """

    def __init__(self, options: StepOptions | None = None, *, seed: int = 0, device: str | torch.device = "auto",
                 progress: bool = False, allow_constant: bool = False, **overrides):
        from estimators.bounds import Bound

        if options is not None and not isinstance(options, StepOptions):
            raise TypeError(f"options must be a rsmi_nn.options.StepOptions, got {type(options).__name__}; "
                            "pass hidden, shared, ... as keywords")
        self.bound_ = overrides.pop("bound") if isinstance(overrides.get("bound"), Bound) else None
        self.options = (options or StepOptions()).replace(**overrides)
        self.seed, self.device, self.progress, self.allow_constant = seed, device, progress, allow_constant

    def fit(self, x, regions) -> CoarseGrainer:
        custom = {} if self.bound_ is None else {"bound": self.bound_}
        self.result_ = coarse_grain(x, regions, self.options, seed=self.seed, device=self.device,
                                    progress=self.progress, allow_constant=self.allow_constant, **custom)
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
