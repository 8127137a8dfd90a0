"""``estimate_mi``: train critics for P problems at once and report held-out MI.

Procedure (one batched program for all problems, no Python loop over them):

1. validate the samples, split the N rows once (seeded) into train / validation / test;
2. standardise every feature with the training rows' mean and std (MI is invariant to it,
   optimisation is not);
3. train one critic per problem (``[P, ...]`` weights) on ``bound.objective`` over minibatches
   of the training rows with the one training loop, :func:`estimators.training.train_problems`;
4. every ``eval_every`` steps score the bound on the *whole* validation split; keep, per
   problem, the weights of its best validation score and stop a problem after ``patience``
   evaluations without a gain beyond ``min_delta`` (the loop's rule); a stopped problem leaves the batch, so
   the slowest problems do not make the others compute until they stop;
5. report the bound of the best weights on the *whole* test split (never a training batch),
   with a batch-means standard error (:func:`estimators.heldout.heldout_bound`).

For InfoNCE the reported value can never exceed ``log(n_test)`` (``MIResult.ceiling``).
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field

import torch

from estimators.bounds import BOUNDS, get_bound
from estimators.critics import CRITICS
from estimators.device import resolve_device
from estimators.fused import critic_objective
from estimators.heldout import chunk_rows, heldout_bound
from estimators.training import ProblemSubset, TrainSettings, TrainState, train_problems
from estimators.validation import (
    as_tensor,
    check_choice,
    check_mask,
    check_paired,
    check_positive_int,
    check_samples,
)

__all__ = ["ESTIMATE_MIN_DELTA", "ESTIMATE_PATIENCE", "MIResult", "estimate_mi"]

# estimate_mi's stopping rule (why 0.03: its docstring). The RSMI step's critic refit, which estimates the MI of
# a fixed variable, stops by it too; a shared filter's with a shorter patience (rsmi_nn.training.refit_settings).
ESTIMATE_PATIENCE, ESTIMATE_MIN_DELTA = 5, 0.03

log = logging.getLogger(__name__)


@dataclass
class MIResult:
    """Held-out MI estimate(s), in nats.

    Attributes
    ----------
    mi : float, or Tensor of shape (P,) for batched input: the bound on the test split.
    stderr : same shape as ``mi``: batch-means standard error of ``mi`` over the test rows.
    ceiling : the largest value the bound can report (``log n_test`` for InfoNCE, else ``inf``).
    bound : the bound's name. critic : the critic's name.
    n_train, n_valid, n_test : sizes of the three splits.
    best_step : int or Tensor (P,): training step of the kept weights (0 = untrained).
    steps : number of training steps run.
    history : ``{"step": [...], "train": Tensor [n_evals(, P)], "valid": Tensor [n_evals(, P)]}``:
        mean training objective since the previous evaluation, and the validation bound (NaN once a problem
        has stopped and left the batch).
    seconds : wall-clock time of the call.
    """

    mi: float | torch.Tensor
    stderr: float | torch.Tensor
    ceiling: float
    bound: str
    critic: str
    n_train: int
    n_valid: int
    n_test: int
    best_step: int | torch.Tensor
    steps: int
    history: dict = field(repr=False)
    seconds: float = 0.0


def _prepare(v, name: str) -> torch.Tensor:
    t = as_tensor(v, name=name)
    if t.ndim == 1:
        t = t.reshape(-1, 1)
    return check_samples(t, name=name, ndim=(2, 3), allow_constant=True)


def _check_masks(mask, t: torch.Tensor, name: str, batched: bool) -> torch.Tensor:
    p, d = t.shape[0], t.shape[2]
    if mask is None:
        return torch.ones(p, d, dtype=torch.bool)
    m = torch.as_tensor(mask)
    if not batched and m.ndim == 1:
        m = m.unsqueeze(0)
    return check_mask(m, (p, d), name=name)


def _check_constant(t: torch.Tensor, mask: torch.Tensor, name: str) -> None:
    std = t.std(dim=1)
    const = (std <= 1e-12 * (1.0 + t.abs().amax(dim=1))) & mask
    if bool(const.any()):
        pi, ci = (int(v) for v in const.nonzero()[0])
        where = f"problem {pi}, column {ci}" if t.shape[0] > 1 else f"column {ci}"
        raise ValueError(
            f"{name} has {int(const.sum())} zero-variance column(s) (first: {where}); "
            "drop constant columns or mask them out, they carry no information"
        )


def _split_sizes(n: int, test_fraction: float, valid_fraction: float) -> tuple[int, int, int]:
    for name, f in (("test_fraction", test_fraction), ("valid_fraction", valid_fraction)):
        if not 0.0 < f < 1.0:
            raise ValueError(f"{name} must lie in (0, 1), got {f}")
    if test_fraction + valid_fraction >= 0.9:
        raise ValueError(f"test_fraction + valid_fraction = {test_fraction + valid_fraction} leaves too few "
                         "training rows; keep their sum below 0.9")
    n_test = round(n * test_fraction)
    n_valid = round(n * valid_fraction)
    n_train = n - n_test - n_valid
    if min(n_test, n_valid) < 2 or n_train < 2:
        raise ValueError(f"n_samples={n} is too small to split into train/validation/test "
                         f"({n_train}/{n_valid}/{n_test} rows); pass at least 20 samples")
    return n_train, n_valid, n_test


def _check_options(bound, critic, seed, max_steps, eval_every, patience, lr, min_delta) -> tuple[int, ...]:
    """``(seed, max_steps, eval_every, patience)`` as ints, after checking every scalar option."""
    check_choice(bound, BOUNDS, name="bound")
    check_choice(critic, tuple(CRITICS), name="critic")
    ints = (check_positive_int(seed, name="seed", minimum=0),) + tuple(
        check_positive_int(v, name=name) for name, v in (("max_steps", max_steps), ("eval_every", eval_every),
                                                         ("patience", patience)))
    if not (lr > 0 and math.isfinite(lr)):
        raise ValueError(f"lr={lr} must be a positive number; e.g. 1e-3")
    if not (min_delta >= 0 and math.isfinite(min_delta)):
        raise ValueError(f"min_delta={min_delta} must be a number >= 0; e.g. 0.01")
    return ints


def _check_problems(x, y, x_mask, y_mask):
    """Samples as ``[P, N, d]`` tensors with their feature masks ``[P, d]``, and whether the input was batched."""
    xt, yt = _prepare(x, "x"), _prepare(y, "y")
    check_paired(xt, yt)
    batched = xt.ndim == 3
    if not batched:
        xt, yt = xt.unsqueeze(0), yt.unsqueeze(0)
    xm, ym = _check_masks(x_mask, xt, "x_mask", batched), _check_masks(y_mask, yt, "y_mask", batched)
    _check_constant(xt, xm, "x")
    _check_constant(yt, ym, "y")
    return xt, yt, xm, ym, batched


def _check_batch_size(batch_size: int | None, bound: str, n_train: int, n: int) -> int:
    if batch_size is None:
        batch_size = min(256 if bound in ("nwj", "dv") else 128, n_train)
    batch_size = check_positive_int(batch_size, name="batch_size", minimum=2)
    if batch_size > n_train:
        raise ValueError(f"batch_size={batch_size} exceeds the {n_train} training rows of n_samples={n}; "
                         "lower batch_size or pass more samples")
    return batch_size


def _split(xt, yt, xm, ym, sizes: tuple[int, int, int], gen: torch.Generator, dev: torch.device) -> dict:
    """``{"train" | "valid" | "test": (x, y)}``, each ``[P, rows, d]`` on ``dev``, standardised with the
    training rows' mean and std (MI is invariant to it, optimisation is not); padded features are exact zeros."""
    n_train, n_valid, _ = sizes
    perm = torch.randperm(xt.shape[1], generator=gen)
    tr, va, te = perm[:n_train], perm[n_train:n_train + n_valid], perm[n_train + n_valid:]
    mx, sx = xt[:, tr].mean(dim=1, keepdim=True), xt[:, tr].std(dim=1, keepdim=True)
    my, sy = yt[:, tr].mean(dim=1, keepdim=True), yt[:, tr].std(dim=1, keepdim=True)
    xs = torch.where(xm.unsqueeze(1), (xt - mx) / sx.clamp_min(1e-12), 0.0).to(dev)
    ys = torch.where(ym.unsqueeze(1), (yt - my) / sy.clamp_min(1e-12), 0.0).to(dev)
    return {name: (xs[:, idx.to(dev)], ys[:, idx.to(dev)]) for name, idx in (("train", tr), ("valid", va), ("test", te))}


def _train_critics(net, objective, split: dict, masks, gen: torch.Generator, settings: TrainSettings) -> TrainState:
    """Maximise ``objective`` of every problem's critic on training minibatches, selected on the validation split."""
    full = (*split["train"], *split["valid"], *masks)
    live = {"data": full}  # the problems still training: stopped ones leave the batch

    def train_objective(rows: torch.Tensor) -> torch.Tensor:
        x_tr, y_tr, _, _, xm, ym = live["data"]
        # index_select, not x_tr[:, rows]: P = 1 000 one-dimensional problems, 128 rows, 305 -> 123 us a step
        return critic_objective(net, objective, x_tr.index_select(1, rows), y_tr.index_select(1, rows), xm, ym)

    rows = chunk_rows(net, full[0].shape[0], full[2].shape[1])  # the chunks of all P problems, kept as they leave

    def validate():
        _, _, x_va, y_va, xm, ym = live["data"]
        net.eval()
        try:
            return heldout_bound(net, x_va, y_va, objective, xm, ym, rows=rows)
        finally:
            net.train()

    cut_net = ProblemSubset([net], full[0].shape[0])

    def restrict(keep: torch.Tensor) -> None:
        live["data"] = tuple(t[keep] for t in full)
        cut_net(keep)

    return train_problems(list(net.parameters()), train_objective, validate, full[0].shape[1], gen, settings,
                          restrict=restrict)


def _report(net, objective, split: dict, masks, state: TrainState, batched: bool, start_time: float,
            **fields) -> MIResult:
    """Score the kept critics on the whole test split; floats for a single problem."""
    net.eval()
    mi, stderr = heldout_bound(net, *split["test"], objective, *masks)
    if bool((~torch.isfinite(mi)).any()):
        bad = (~torch.isfinite(mi)).nonzero().flatten().tolist()
        log.warning("estimate_mi: the %s bound is not finite on the test split for problem(s) %s", objective.name,
                    bad[:10])
    never = (state.best_step == 0).nonzero().flatten().tolist()
    if never:
        log.warning("estimate_mi: %d problem(s) never improved on their untrained critic (first %s)",
                    len(never), never[:10])
    hist = state.history
    history = {"step": hist["step"], "train": hist["train"], "valid": hist["valid"]}
    mi, stderr, best_step = mi.detach().cpu(), stderr.detach().cpu(), state.best_step.cpu()
    if not batched:
        history = {"step": hist["step"], "train": hist["train"][:, 0], "valid": hist["valid"][:, 0]}
        mi, stderr, best_step = float(mi[0]), float(stderr[0]), int(best_step[0])
    return MIResult(mi=mi, stderr=stderr, best_step=best_step, steps=state.steps_run, history=history,
                    seconds=time.perf_counter() - start_time, **fields)


def estimate_mi(x, y, bound: str = "infonce", seed: int = 0, *, critic: str = "separable", x_mask=None, y_mask=None,
                batch_size: int | None = None, max_steps: int = 2000, eval_every: int = 50,
                patience: int = ESTIMATE_PATIENCE, min_delta: float = ESTIMATE_MIN_DELTA, lr: float = 1e-3,
                hidden: int = 64, embed: int = 32, layers: int = 2,
                test_fraction: float = 0.25, valid_fraction: float = 0.15, bound_options: dict | None = None,
                device: str | torch.device | None = "auto", progress: bool = False) -> MIResult:
    """Estimate I(X;Y) in nats with a neural variational bound, reported on held-out rows.

    Parameters
    ----------
    x, y : array-like or Tensor of shape (n_samples, d) (or (n_samples,)) for one problem, or
        (n_problems, n_samples, d) for P problems trained at once. Problems of unequal width are
        zero-padded to a common ``d`` and described by ``x_mask``/``y_mask``.
    bound : ``"infonce"`` (default; <= log n_test), ``"nwj"``, ``"dv"`` (MINE) or ``"smile"``.
    seed : seeds the split, the critic's initialisation and the minibatch order.
    critic : ``"separable"`` (``<g(x), k(y)>``, default, cheap) or ``"concat"`` (MLP of ``[x, y]``).
    x_mask, y_mask : bool Tensor of shape (P, d) (or (d,) for one problem); True = real feature.
    batch_size : training minibatch (default ``min(128, n_train)``, and ``min(256, n_train)`` for
        NWJ and DV, whose unclipped ``E_q[e^f]`` term has a gradient variance growing like
        ``e^I``: on a 1-D Gaussian with 2 nats at N = 3 000, DV read 1.69 at 128 and 1.86 at 256,
        NWJ 1.64 and 1.77); InfoNCE's training objective is capped at ``log batch_size``.
    max_steps, eval_every, patience, min_delta : at most ``max_steps`` steps; validation every
        ``eval_every`` steps; a problem stops after ``patience`` evaluations without a gain larger than
        ``min_delta`` nats (its best weights are kept regardless; :func:`estimators.training.train_problems`).
        0.03 nats is about the validation standard error of a few hundred held-out rows, the threshold
        this estimator's earlier significance rule used (measured on this 2-core CPU: on 9 one-dimensional
        Gaussian problems at N = 4 000, seeds 0-2, four bounds, MAE 0.0091 in 533 steps on average, against
        0.0091 in 988 steps with 1e-3; on 200 problems at N = 2 000, 800 steps and 38 s against 1 150 and
        55 s, MAE 0.033 either way).
    lr : Adam's learning rate. hidden, embed, layers : critic size.
    test_fraction, valid_fraction : fractions of the rows held out for the report and for early stopping.
    bound_options : extra options for :func:`estimators.get_bound` (``clip`` for smile, ``ema_decay`` for dv).
    device : ``"auto"`` (CUDA when present), ``"cpu"``, ``"cuda"``, ... progress : show a tqdm bar.

    Returns
    -------
    MIResult with ``mi`` and ``stderr`` (floats, or Tensors of shape (P,)), ``ceiling`` and history.

    Examples
    --------
    >>> from estimators.samplers import gaussian_pairs
    >>> x, y, true_mi = gaussian_pairs(4000, [0.8], seed=0)
    >>> res = estimate_mi(x, y)  # doctest: +SKIP
    >>> abs(res.mi - true_mi) < 4 * res.stderr + 0.02  # doctest: +SKIP
    True
    """
    start_time = time.perf_counter()
    seed, max_steps, eval_every, patience = _check_options(bound, critic, seed, max_steps, eval_every, patience, lr,
                                                           min_delta)
    dev = resolve_device(device)
    xt, yt, xm, ym, batched = _check_problems(x, y, x_mask, y_mask)
    (p, n), sizes = xt.shape[:2], _split_sizes(xt.shape[1], test_fraction, valid_fraction)
    settings = TrainSettings(batch_size=_check_batch_size(batch_size, bound, sizes[0], n), max_steps=max_steps,
                             lr=lr, eval_every=eval_every, patience=patience, min_delta=min_delta,
                             description=f"estimate_mi[{bound}, P={p}]", progress=progress)
    gen = torch.Generator().manual_seed(seed)
    split = _split(xt, yt, xm, ym, sizes, gen, dev)
    net = CRITICS[critic](p, xt.shape[2], yt.shape[2], hidden=hidden, embed=embed, layers=layers,
                          generator=gen).to(dev)
    objective = get_bound(bound, **(bound_options or {}))
    masks = (xm.to(dev), ym.to(dev))
    state = _train_critics(net, objective, split, masks, gen, settings)
    return _report(net, objective, split, masks, state, batched, start_time, ceiling=objective.ceiling(sizes[2]),
                   bound=bound, critic=critic, n_train=sizes[0], n_valid=sizes[1], n_test=sizes[2])
