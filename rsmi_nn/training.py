"""The RSMI step's training problem: every block's filter and critic in one tensor program.

Per step a minibatch of rows ``x[B, U]`` is gathered into ``V : [J, B, max_visible]`` and
``E : [J, B, max_env]`` through the padded region indices (padding masked to zero); the
filter gives ``H : [J, B, hidden]``, the per-block critic scores ``[J, B, B]`` with
``scores[j, a, b] = f_j(E_a, H_b)`` — the environment in the rows, so InfoNCE classifies each
environment's own H among the batch's H's. That orientation matters for a separable critic: the
optimal critic ``log p(h|e) - log p(h)`` is then needed only up to functions of e alone, and the
remaining non-linearity (e.g. the h² term of a Gaussian) sits on the low-dimensional H side. The bound's
objective, summed over blocks, is maximised by the one training loop of the package,
:func:`estimators.training.train_problems`: blocks are independent slices of every parameter (a shared
filter is one slice for all), and each block keeps its own best checkpoint and stops by the loop's rule.

Held-out protocol: the rows are split (seeded) into train / validation / test. Every
``eval_every`` steps each block's MI is estimated on the validation rows with the hard
(binarised) H (:func:`evaluate`); the reported MI is the best checkpoint's estimate on the
*test* rows, which played no part in training or selection.

Two phases around the loop: :func:`warm_start` (filters start at their block's canonical directions against its
environment, the Gaussian optimum, or at its principal components) and, after training H with noise (real-valued or
binary), a second run of the loop that goes on training the critic, from each block's best checkpoint, on the
noiseless H with the filters :func:`frozen` (``refit_critic``), so the reported MI is the variables' own rather than
a critic's fitted to H + noise. (A fresh critic, as before 2026-12-01, stopped at a lower held-out MI on the
default run and on Gaussian fields.)
"""

from __future__ import annotations

import contextlib

import torch

from estimators.device import Scratch
from estimators.fused import critic_objective
from estimators.training import ProblemSubset, TrainSettings, TrainState, train_problems

__all__ = ["TEST_COLUMNS", "UnitMajor", "VALIDATION_COLUMNS", "after_refit", "evaluate", "frozen", "gather",
           "pick_rows", "refit_generator", "SHARED_REFIT_PATIENCE", "refit_settings", "refits_critic", "train_blocks",
           "warm_start"]


class UnitMajor:
    """Rows ``z [n, U]`` held unit-major: ``t [U + 1, n]``, unit ``u``'s values in row ``u`` and a zero row last
    (where padded indices point). :func:`gather` then copies whole rows for any range of rows, where a row-major
    ``z`` has to be transposed at every call: on this 2-core CPU a validation's gather of 3 000 rows x 2 048 sites
    4.9 -> 0.75 ms, 256 of them 337 -> 75 us. ``self[a:b]`` is a view of rows ``a..b-1``."""

    def __init__(self, t: torch.Tensor):
        self.t = t

    @classmethod
    def from_rows(cls, z: torch.Tensor, scratch: Scratch | None = None) -> UnitMajor:
        """Rows ``z [n, U]`` transposed, into ``scratch`` (valid until its next use) when given."""
        shape = (z.shape[1] + 1, z.shape[0])
        t = z.new_empty(shape) if scratch is None else scratch.take(shape, z)
        t[:-1].copy_(z.t())
        t[-1].zero_()
        return cls(t)

    @property
    def shape(self) -> torch.Size:
        return torch.Size((self.t.shape[1], self.t.shape[0] - 1))

    @property
    def device(self) -> torch.device:
        return self.t.device

    def to(self, device) -> UnitMajor:
        return UnitMajor(self.t.to(device))

    def __getitem__(self, rows: slice) -> UnitMajor:
        if not isinstance(rows, slice):
            raise TypeError(f"UnitMajor takes a slice of rows, got {type(rows).__name__}")
        return UnitMajor(self.t[:, rows])


def pick_rows(z: torch.Tensor, rows: torch.Tensor, scratch: Scratch) -> torch.Tensor:
    """``z[rows]`` for rows ``z [n, U]`` and a LongTensor ``rows [B]``, written into ``scratch`` (valid until its next
    use): ``index_select``, not advanced indexing (a minibatch of 128 rows of [14 000, 2 304], this 2-core CPU:
    201 -> 29 us), into memory already touched (see :class:`estimators.device.Scratch`)."""
    return torch.index_select(z, 0, rows, out=scratch.take((rows.numel(), z.shape[1]), z))


def gather(z: torch.Tensor | UnitMajor, index: torch.Tensor, mask: torch.Tensor | None = None, *,
           scratch: Scratch | None = None) -> torch.Tensor:
    """Rows ``z : [B, U]`` (or a :class:`UnitMajor`) and a padded index ``[J, m]`` (-1 = pad) -> ``[J, B, m]``,
    zeros where padded; written into ``scratch`` (a view of its buffer, valid until its next use) when given.

    One ``index_select`` of whole rows of ``zᵀ`` (a zero row last, where the pads point; so does an index of U,
    one past the units); the result is the transpose of a contiguous ``[J, m, B]``, a layout batched matmuls read
    as a transposed operand. On the L = 32 Ising step (256 blocks of 128 environment sites, B = 128, this 2-core
    CPU): the gather 3.6x faster than advanced indexing and a mask product, the environment layer's forward
    and backward 1.3-1.6x faster than on ``[B, J, m]`` permuted. A row-major ``z`` is made a ``UnitMajor`` at each
    call (a transpose): gather twice from one ``UnitMajor`` instead. ``mask`` is accepted for callers that hold one;
    the pads in ``index`` alone decide where the zeros go.
    """
    if not isinstance(z, UnitMajor):  # torch's blocked transpose: [4 096, 9 216] 35 ms, 163-195 through a cat
        z = UnitMajor.from_rows(z)
    n, u = z.shape
    flat = torch.where(index >= 0, index, u).reshape(-1)  # a UnitMajor's column slice: selected without a copy
    out = None if scratch is None else scratch.take((flat.numel(), n), z.t)
    return torch.index_select(z.t, 0, flat, out=out).view(*index.shape, n).transpose(1, 2)


# Held-out scoring is bounded: each row is scored against ``columns`` rows of its own group, not all M
# (:func:`estimators.heldout.heldout_bound`). Every validation row still counts. A whole M x M matrix per
# block made the held-out passes ~75 % of a shared L = 32 Ising step (256 blocks, 2 000 validation and
# 4 000 test rows: 1 G and 4 G scores), measured on this 2-core CPU.
VALIDATION_COLUMNS = 256  # selection only: InfoNCE's ceiling log 256 = 5.5 nats, far above one block's I(H;E)
TEST_COLUMNS = 1024  # the reported MI: ceiling log 1024 = 6.9 nats; finite-K bias ~ (e^I - 1) / K, 0.6e-3 at 0.5 nats


@torch.no_grad()
def evaluate(filt, critic, bound, z: UnitMajor, regions_dev, *, n_groups: int = 10,
             columns: int | None = VALIDATION_COLUMNS, rows: int | None = None, environment=None):
    """Held-out estimate per block on all rows of ``z`` (standardised, held unit-major), hard H:
    ``(mi [J], stderr [J])``.

    Each row is scored against the ``columns`` rows of its group (all M rows when ``columns`` is None:
    InfoNCE's ceiling ``log M``), built chunk by chunk (:func:`estimators.heldout.heldout_bound`): each
    chunk gathers its rows' environments on the fly, so memory stays ``O(J M)``. Cost ``J * M * columns``
    scores. ``rows`` : rows per score chunk (:func:`estimators.heldout.row_statistics`). ``environment(start,
    stop)`` : what the critic reads of rows ``start..stop-1`` (default: their environments, gathered from ``z``
    into one buffer in small pages: its first touch is its cost. 2-core Zen 4 VM: a shared L = 64 Ising step's
    test gathers 1 024 blocks x 128 sites x 256 rows at once, 134 MB, 0.74-0.82 -> 0.10-0.17 s; the 51
    validations of a per-block L = 32 step 3.7-4.2 -> 2.9-3.4 s. A buffer kept across those validations in huge
    pages saved as much there but made the training steps fault 140 000 pages more.) The visible rows that give the
    hard H pass through the same buffer first (the default run's level 0: 1 321 blocks x 615 rows x 25 units, 77 MB;
    over a flow's 14 calls 1.3-1.5 -> 0.85-1.0 s).
    """
    from estimators.heldout import heldout_bound

    vis, vm, env, em = regions_dev
    scratch = Scratch(small=True)  # each chunk of visible rows read before the next; then the environments', likewise
    h = torch.cat([filt(gather(z[s:s + 4096], vis, scratch=scratch), hard=True) for s in range(0, z.shape[0], 4096)],
                  dim=1)
    if environment is None:
        def environment(start: int, stop: int) -> torch.Tensor:
            return gather(z[start:stop], env, scratch=scratch)

    value, stderr = heldout_bound(critic, environment, h, bound,
                                  n_groups=n_groups, columns=columns, rows=rows)
    return value.float(), stderr.float()


def train_blocks(filt, critic, bound, z_train, z_val, regions_dev, settings: TrainSettings,
                 generator: torch.Generator, blocks: torch.Tensor | None = None) -> TrainState:
    """Train ``filt`` and ``critic`` in place; on return they hold each block's best checkpoint.

    ``z_train`` : standardised rows ``[n, U]``; ``z_val`` : the validation rows, :class:`UnitMajor`;
    ``regions_dev`` : ``(visible, visible_mask, environment, environment_mask)`` on the device. The filter's
    temperature anneals after every step.
    ``blocks`` : train only these blocks (a rank's share, :mod:`rsmi_nn.distributed`); the others keep their
    initial parameters.
    Stopped blocks leave the batch (:func:`estimators.training.train_problems`' ``restrict``): the blocks still
    training keep the numbers of a run without it (a binarised filter's training noise is drawn for every
    block and cut to the live ones).
    """
    full = tuple(regions_dev)
    live = {"regions": full}  # the regions of the blocks still training (stopped blocks leave the batch)
    cut_modules = ProblemSubset([filt, critic], full[0].shape[0])

    # a step's, read before the next step. The minibatch's rows too: a fresh [64, 9 216] (the default run's level 0,
    # 2.4 MB) is a new huge-page region at every step, 1.3-1.7 ms to gather where index_select into a buffer takes 0.04
    picked, transposed, visible, environments = Scratch(), Scratch(), Scratch(), Scratch()

    def objective(rows: torch.Tensor) -> torch.Tensor:
        vis, _, env, _ = live["regions"]
        z = UnitMajor.from_rows(pick_rows(z_train, rows, picked), transposed)  # one transpose for both gathers
        h = filt(gather(z, vis, scratch=visible))
        # never forms [J, B, B] (a binary H: [J, B, 2^h]); pads are zeros
        return critic_objective(critic, bound, gather(z, env, scratch=environments), h, codes=filt.codes(h))

    def restrict(keep: torch.Tensor) -> None:
        live["regions"] = tuple(t[keep] for t in full)
        cut_modules(keep)

    from estimators.heldout import chunk_rows

    # score chunks of all J blocks, kept as blocks leave (same chunks, same bits)
    rows = chunk_rows(critic, full[0].shape[0], min(z_val.shape[0], VALIDATION_COLUMNS))
    params = list(filt.parameters()) + list(critic.parameters())
    return train_problems(params, objective, lambda: evaluate(filt, critic, bound, z_val, live["regions"], rows=rows),
                          z_train.shape[0], generator, settings, on_step=filt.anneal_step, restrict=restrict,
                          problems=blocks)


def warm_start(filt, opts, z_train: torch.Tensor, regions_dev, rows: int = 8192, chunk: int = 512,
               moment_bytes: int = 1 << 27) -> None:
    """Start each linear filter at its block's principal components (``init="pca"``) or its canonical directions
    against its environment (``"cca"``, :func:`rsmi_nn.filters.canonical_directions`), from at most ``rows``
    training rows (already in random order) gathered ``chunk`` rows at a time. The canonical moments are products
    in float32 summed in float64, for as many blocks at once as fit ``moment_bytes``; a shared filter pools those
    of the blocks it is validated on (:func:`rsmi_nn.shared_step.spread_blocks`)."""
    from rsmi_nn.filters import canonical_directions, principal_directions
    from rsmi_nn.shared_step import spread_blocks

    method = opts.start
    if method == "random":
        return
    vis, vm, env = regions_dev[0], regions_dev[1], regions_dev[2]
    n = min(rows, z_train.shape[0])
    if method == "pca":
        chunks = (gather(z_train[a:a + chunk], vis, vm) for a in range(0, n, chunk))
        filt.start_at(principal_directions(chunks, opts.hidden, shared=opts.shared))
        return
    if opts.shared:
        pick = spread_blocks(vis.shape[0], vis.device)
        vis, env = vis[pick], env[pick]
    width = vis.shape[1] + env.shape[1]
    per_step = max(1, moment_bytes // (4 * width * (width + chunk)))
    moments = [_moments(z_train[:n], vis[a:a + per_step], env[a:a + per_step], chunk)
               for a in range(0, vis.shape[0], per_step)]
    cvv, cve, cee = (torch.cat(parts) for parts in zip(*moments))
    filt.start_at(canonical_directions(cvv, cve, cee, opts.hidden, shared=opts.shared))


def _moments(z: torch.Tensor, vis: torch.Tensor, env: torch.Tensor, chunk: int):
    """Second moments ``(Σ_VV, Σ_VE, Σ_EE)`` (float64) of the blocks ``vis`` / ``env`` over the rows ``z``."""
    total, scratch, transposed = None, Scratch(), Scratch()  # 256 Ising blocks' environments on 512 rows: 67 MB a chunk
    for a in range(0, z.shape[0], chunk):
        rows = UnitMajor.from_rows(z[a:a + chunk], transposed)  # one transpose for both gathers
        v, e = gather(rows, vis), gather(rows, env, scratch=scratch)
        vt = v.transpose(1, 2)
        part = (torch.bmm(vt, v).double(), torch.bmm(vt, e).double(), torch.bmm(e.transpose(1, 2), e).double())
        total = part if total is None else tuple(t + p for t, p in zip(total, part))
    return tuple(t / z.shape[0] for t in total)


# Evaluations without a gain of ESTIMATE_MIN_DELTA before a shared filter's refit stops (per-block refits wait
# estimate_mi's 5). A shared critic reads 16 blocks' rows a step and is refitted from its training checkpoint, so
# its first evaluation takes nearly all of its gain (2×2 Ising at T_c, seeds 0-2: 0.33 -> 0.39 nats at step 25,
# <= 0.005 more by step 150) and waiting only costs time. 5 -> 2 measured 2026-12-01 (seeds 0-4, alternating): shared
# step 2.08 -> 1.77 s, mean reported MI 0.4021 -> 0.4017, the same filters. 2 -> 1 measured 2026-12-03 (2-core Zen 4
# VM): the refit 75 -> 50 steps (of a step's 175-225), reported MI over eight lattices (L = 24 at T 2.1 and 2.6, 32 at
# T_c seeds 0-2, 48 at T 2.5 seeds 1-2, 64 at T_c) moved -0.0007 to +0.0005 nats, mean -0.0003, against a per-block
# standard error of 0.011-0.024; the filters are the refit's input, not its output. Not per block: the default run's
# flow keeps gaining (MI per level 0.550 / 0.886 -> 0.544 / 0.875 with 2, no faster: 57.0 against 58.7 s).
SHARED_REFIT_PATIENCE = 1


def refits_critic(opts) -> bool:
    """Whether the step goes on training its critic on the noiseless H (``refit_critic``, an H trained with noise:
    Gaussian for a real-valued H, the relaxed Bernoulli's logistic noise for a binary one)."""
    return opts.refit_critic and opts.noise_scale > 0


def refit_settings(settings: TrainSettings, *, shared: bool = False) -> TrainSettings:
    """The critic refit's training: the step's, stopped by :func:`estimators.estimate_mi`'s rule (the refit
    estimates the MI of a fixed variable; a ``shared`` filter's with :data:`SHARED_REFIT_PATIENCE`), never waiting
    longer than the step's own rule, and with no warm-up (an annealed filter's temperature no longer matters: the
    frozen filter gives the hard H). 2×2 Ising at T_c, 256 per-block filters: reported MI 0.4025 -> 0.4023 nats, the
    step 87 -> 61 s."""
    from dataclasses import replace

    from estimators.estimate import ESTIMATE_MIN_DELTA, ESTIMATE_PATIENCE

    patience = SHARED_REFIT_PATIENCE if shared else ESTIMATE_PATIENCE
    return replace(settings, patience=min(settings.patience, patience),
                   min_delta=max(settings.min_delta, ESTIMATE_MIN_DELTA), warmup_steps=0)


def refit_generator(seed: int) -> torch.Generator:
    """The critic refit's own generator (its minibatches), a child of the step's ``seed``: the
    training's generator ends in a state that depends on how long the blocks trained, which differs between
    the ranks of a distributed step (each trains its share), so a refit drawing from it would not write the
    one-process bytes."""
    import numpy as np

    return torch.Generator().manual_seed(int(np.random.SeedSequence((seed, 1)).generate_state(1, np.uint64)[0] >> 1))


@contextlib.contextmanager
def frozen(filt):
    """The filter giving its evaluation H (no training noise; a binary H exactly ±1) with its parameters out of
    the optimiser (no gradient)."""
    params = list(filt.parameters())
    filt.frozen = True
    for t in params:
        t.requires_grad_(False)
    try:
        yield
    finally:
        filt.frozen = False
        for t in params:
            t.requires_grad_(True)


def after_refit(state, refit):
    """The training's state (steps, history) with the refitted critic's validation values."""
    from dataclasses import replace

    return replace(state, best_val=refit.best_val, best_step=refit.best_step,
                   collapsed=sorted(set(state.collapsed) | set(refit.collapsed)))
