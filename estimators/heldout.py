"""Evaluate a bound on a whole held-out set, in row chunks, with a standard error.

A held-out set of M rows defines one ``M x M`` score matrix per problem; using all of it
(rather than averaging small batches) gives InfoNCE the largest possible ceiling
``log M`` and the smallest finite-batch bias, and gives the other bounds ``M(M-1)``
negative pairs. The matrix is never held whole: rows are scored in chunks against all
columns and reduced to per-row statistics, from which each bound recombines itself exactly
(:meth:`estimators.bounds.Bound.from_row_statistics`; ``heldout_bound`` equals
``get_bound(name).estimate(critic(x, y))`` on the full matrix).

The standard error is a batch-means estimate: the rows are cut into ``n_groups`` disjoint
groups, the bound is evaluated on each group's rows (against all columns), and
``stderr = std(group values) / sqrt(n_groups)``.
"""

from __future__ import annotations

import itertools
import math

import torch

from estimators.bounds import Bound, get_bound
from estimators.critics import SeparableCritic
from estimators.fused import MAX_CODES, bit_codes

__all__ = ["bound_with_stderr", "chunk_rows", "group_chunk_rows", "group_edges", "heldout_bound", "row_statistics"]

# Elements of one scores chunk: 4 M scores, 16 MiB of float32 (8 MiB until the rows' embedding was batched,
# EMBED_ROWS below; smaller chunks tried again with huge pages, 2026-12-03: slower). With 32 MiB chunks (glibc's
# largest dynamic mmap threshold) the held-out pass of a 4 096-block RSMI level peaked 3-13 GiB above its working
# set, varying from run to run (L = 128 Ising flow: 4.5-14 GiB); 8 MiB: 2.2 GiB; 2 MiB: 1.9 GiB but the default
# run's flow 35 % slower (one row per chunk: the critic runs on tiny batches). Measured on this 2-core CPU.
SCORE_BUDGET = 1 << 22
#: a separable critic embeds the held-out rows' x side this many rows at a time (then scores them a chunk of
#: SCORE_BUDGET at a time): with hundreds of problems a score chunk is a few rows, and embedding a few rows per
#: batched matmul ran the RSMI validation at a fifth of the training steps' FLOP rate
EMBED_ROWS = 256
#: a SeparableCritic embeds and scores the held-out rows a group of problems at a time (on the CPU), its widest
#: activation about this many bytes (:func:`_problem_groups`), so that the activations stay in cache rather than make
#: a pass through main memory each: P = 1 000 critics of estimate_mi (300 validation rows, hidden 64), medians of 8
#: alternated on this 2-core CPU, 0.5 / 1 / 2 MiB and all problems at once: 246 / 182 / 185 / 302 ms, the same bits.
#: A problem's numbers do not depend on its group for the float32 GELU critics the engine trains; torch computes the
#: last elements of a vectorised SiLU, or of a float64 GELU, by a scalar formula an ulp away, so there which group
#: (or batch, as problems leave it) a problem shares can move its last bits.
PROBLEM_GROUP_BYTES = 1 << 21
#: scores a problem in one chunk of its group (:func:`group_chunk_rows`). The chunk had been ``SCORE_BUDGET`` over all
#: P problems: with 1 321 blocks a few rows a chunk, tiny products and reductions (the default run's level-0 test,
#: 1 321 x 1 230 rows x 615 columns, 8 200 calls of 3 rows, and against a transposed view of the columns)
ROW_SCORES = 1 << 15


@torch.no_grad()
def row_statistics(critic, x, y: torch.Tensor, x_mask=None, y_mask=None, *, clip: float | None = None,
                   budget: int = SCORE_BUDGET, keys: tuple[str, ...] = ("lse", "lse_off"),
                   rows: int | None = None) -> dict[str, torch.Tensor]:
    """Per-row reductions of the held-out score matrix ``f[p, i, j] = f_p(x_i, y_j)``.

    ``x`` is a ``[P, M, x_dim]`` tensor, or a callable ``x(start, stop) -> [P, stop - start, x_dim]``
    that builds a chunk's rows on the fly (RSMI gathers every block's environment rows that
    way, so the ``[P, M, x_dim]`` tensor is never formed).

    Returns ``[P, M]`` tensors: ``diag`` (``f_ii``) and those of ``keys``: ``lse`` (``logsumexp_j f_ij``),
    ``lse_off`` (``logsumexp_{j != i} f_ij``); when ``clip`` is given, also ``lse_off_clip`` (same over ``f``
    clamped to ``[-clip, clip]``). Each reduction is a pass over the scores: InfoNCE reads ``lse`` alone
    (:attr:`estimators.bounds.Bound.row_keys`), half the time of both. ``rows`` : rows per chunk (default:
    :func:`chunk_rows` of ``budget``); a training loop whose problems leave the batch fixes it, so that the
    live problems' scores are computed in the same chunks, to the same bits. A :class:`SeparableCritic` on the CPU
    takes neither: its chunks are :func:`group_chunk_rows`, a function of ``M`` alone. Columns of a separable critic that
    take two values per entry (a binarised H) are scored against their distinct values only, when ``lse`` is
    all that is asked (:func:`_coded_row_statistics`: the same statistics, to float32 rounding).
    """
    p, m = y.shape[0], y.shape[1]
    x_rows = x if callable(x) else (lambda start, stop: x[:, start:stop])
    chunk = chunk_rows(critic, p, m, budget) if rows is None else rows
    coded = _coded(critic, y, keys, clip)
    if coded is not None:
        return _coded_row_statistics(critic, x_rows, coded, y_mask, [0, m], x_mask)
    names = ["diag", *(k for k in ("lse", "lse_off") if k in keys)] + (["lse_off_clip"] if clip is not None else [])
    groups: dict[tuple[int, int], dict[str, list]] = {}  # per group of problems, each statistic's row chunks
    for e, start, s in _score_chunks(critic, x_rows, y, x_mask, y_mask, m, chunk):
        out = groups.setdefault((e.start, e.stop), {k: [] for k in names})
        _add_statistics(out, s, start, clip)
    if not groups:  # no problems
        return {k: y.new_zeros(0, m) for k in names}
    return {k: torch.cat([torch.cat(out[k], dim=1) for out in groups.values()]) for k in names}


def _add_statistics(out: dict[str, list], s: torch.Tensor, start: int, clip: float | None) -> None:
    """Append the per-row statistics ``out`` asks for of the scores ``s [P', r, M]`` of rows ``start:start + r``
    (overwritten)."""
    rows = torch.arange(s.shape[1], device=s.device)
    cols = rows + start
    out["diag"].append(s[:, rows, cols])
    last = "lse_off" not in out and clip is None  # nothing reads the scores after the lse: reduce in place
    if "lse" in out:
        out["lse"].append(_logsumexp_(s) if last else torch.logsumexp(s, dim=2))
        if last:
            return
    s[:, rows, cols] = -math.inf
    if "lse_off" in out:
        out["lse_off"].append(torch.logsumexp(s, dim=2))
    if clip is not None:
        c = s.clamp(-clip, clip)
        c[:, rows, cols] = -math.inf
        out["lse_off_clip"].append(torch.logsumexp(c, dim=2))


def _score_chunks(critic, x_rows, y: torch.Tensor, x_mask, y_mask, m: int, chunk: int):
    """Yield ``(problems, start, scores [P', r, M])`` for every chunk of ``chunk`` rows, ``problems`` the slice of
    the P problems the scores are of. A separable critic's columns are embedded once and its rows
    :data:`EMBED_ROWS` at a time (a multiple of the chunk, fixed by it alone); a :class:`SeparableCritic` runs
    on :func:`_problem_groups` of problems, whose activations stay in cache, in chunks of
    :func:`group_chunk_rows` rows (``chunk`` is not used there)."""
    if not hasattr(critic, "embed_x"):
        for start in range(0, m, chunk):
            yield slice(None), start, critic(x_rows(start, min(m, start + chunk)), y, x_mask, y_mask)
        return
    grouped = isinstance(critic, SeparableCritic) and y.device.type == "cpu"  # a cache's worth: a CPU's concern
    if grouped:
        size = _group_size(critic, min(EMBED_ROWS, m), y.element_size())
        chunk = group_chunk_rows(m)
        groups = _problem_groups(y.shape[0], size)
    else:  # other critics take all problems (rsmi_nn's keyed one)
        groups = [slice(None)]
    span = chunk * max(1, EMBED_ROWS // chunk)
    extra = (lambda e: (e,)) if grouped else (lambda e: ())
    # [P', embed, M] each; a group's copied contiguous (the default run's level-0 test: 3x faster products)
    columns = [critic.embed_y(y[e], y_mask, *extra(e)).transpose(1, 2) for e in groups]
    if grouped:
        columns = [c.contiguous() for c in columns]
    for first in range(0, m, span):
        last = min(m, first + span)
        xs = x_rows(first, last)
        for e, cols in zip(groups, columns):
            ex = critic.embed_x(xs[e], x_mask, *extra(e))
            for start in range(first, last, chunk):
                yield e, start, torch.bmm(ex[:, start - first:min(last, start + chunk) - first], cols)


def group_chunk_rows(m: int) -> int:
    """Rows per score chunk of a :class:`SeparableCritic`'s problem group against ``m`` columns: about
    :data:`ROW_SCORES` scores a problem, whatever the number of problems (so a problem's chunks, and its bits, are
    the same in any batch or share of one)."""
    return max(1, min(m, EMBED_ROWS, ROW_SCORES // m))


def _group_size(critic: SeparableCritic, rows: int, itemsize: int) -> int:
    """Problems a group of :func:`_problem_groups`: their widest activation on ``rows`` rows (``itemsize`` bytes an
    entry) takes about :data:`PROBLEM_GROUP_BYTES`; at most ``SCORE_BUDGET // ROW_SCORES`` (128), so that a score
    chunk stays within :data:`SCORE_BUDGET` however narrow the critic."""
    width = max(critic.hidden, critic.embed)
    return max(2, min(SCORE_BUDGET // ROW_SCORES, PROBLEM_GROUP_BYTES // (itemsize * rows * width)))


def _problem_groups(p: int, size: int) -> list[slice]:
    """Consecutive groups of ``size`` of the ``p`` problems, never one problem alone where there are more: a score
    chunk of one problem and one row is a single sum, which torch splits between threads (other rounding)."""
    starts = list(range(0, p, size))
    if len(starts) > 1 and p - starts[-1] == 1:  # a lone last problem joins the group before it
        starts.pop()
    return [slice(a, b) for a, b in zip(starts, starts[1:] + [p])]


def _coded(critic, y: torch.Tensor, keys, clip) -> tuple[torch.Tensor, torch.Tensor] | None:
    """:func:`_two_valued_codes` of ``y`` where the short cut applies: a separable critic, ``lse`` alone."""
    return _two_valued_codes(y) if hasattr(critic, "embed_x") and set(keys) <= {"lse"} and clip is None else None


def _two_valued_codes(y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
    """``(values [P, K, h], codes [P, M])`` when every entry of ``y [P, M, h]`` is one of two values (a binarised
    H) and ``K = 2^h <= MAX_CODES``: ``values`` the K distinct rows y can take, ``codes`` which one each row is.
    None otherwise (a few passes over y, against the M x columns scores a full pass forms)."""
    p, _, h = y.shape
    if (1 << h) > MAX_CODES or y.numel() == 0 or not y.is_floating_point():
        return None
    lo, hi = y.amin(), y.amax()
    is_hi = y == hi
    if not bool((is_hi | (y == lo)).all()):
        return None
    table = (torch.arange(1 << h, device=y.device).unsqueeze(1) >> torch.arange(h, device=y.device)) & 1  # [K, h]
    return torch.where(table.bool(), hi, lo).to(y.dtype).expand(p, -1, -1), bit_codes(is_hi)


@torch.no_grad()
def _coded_row_statistics(critic, x_rows, coded, y_mask, edges: list[int], x_mask) -> dict[str, torch.Tensor]:
    """``diag`` and ``lse`` of :func:`row_statistics` for columns that take K distinct values, each row scored
    against the columns of its group (``edges``: the groups' start rows and M, :func:`group_edges`).

    A separable critic's score of a row against any column is one of K, so ``logsumexp_j f_ij = logsumexp_k
    (f_ik + log n_k)`` (``n_k`` columns of the row's group with value k) — the same number, from ``M x K`` scores
    instead of ``M x columns`` (a binarised H: K = 2 for one hidden variable; the validations and test of a
    shared L = 32 Ising step were ~0.4 of its ~1.9 s on this 2-core CPU). Rows are embedded and scored
    :data:`EMBED_ROWS` at a time whatever P, so a problem's numbers do not depend on the others in the batch.
    """
    values, codes = coded
    (p, k), m = values.shape[:2], codes.shape[1]
    sizes = torch.tensor(edges, device=codes.device).diff()
    group = torch.repeat_interleave(torch.arange(sizes.numel(), device=codes.device), sizes)  # [M]
    counts = torch.zeros(p, sizes.numel() * k, device=codes.device)
    counts.scatter_add_(1, group * k + codes, torch.ones(codes.shape, device=codes.device))
    log_counts = counts.view(p, -1, k).log()  # [P, groups, K]; -inf where no column of a group takes a value
    ey = critic.embed_y(values, y_mask).transpose(1, 2)  # [P, embed, K]
    diag, lse = [], []
    for start in range(0, m, EMBED_ROWS):
        s = torch.bmm(critic.embed_x(x_rows(start, min(m, start + EMBED_ROWS)), x_mask), ey)
        rows = slice(start, start + s.shape[1])
        diag.append(s.gather(2, codes[:, rows, None]).squeeze(2))
        lse.append(torch.logsumexp(s + log_counts[:, group[rows]], dim=2))
    return {"diag": torch.cat(diag, dim=1), "lse": torch.cat(lse, dim=1)}


def _logsumexp_(s: torch.Tensor) -> torch.Tensor:
    """``logsumexp`` over the last dimension of ``s [P, r, M]`` (finite rows), overwriting ``s``: through
    :func:`torch.logsumexp` a score chunk of 16 MB is copied once more (its subtraction took 57 of the ~180 ms of a
    shared Ising step's test, 256 blocks x 1 024 rows x 256 columns, on this 2-core CPU; the step 1.77 -> 1.72 s)."""
    top = s.amax(dim=2, keepdim=True)
    return s.sub_(top).exp_().sum(dim=2).log_().add_(top.squeeze(2))


def chunk_rows(critic, p: int, m: int, budget: int = SCORE_BUDGET) -> int:
    """Rows per chunk of :func:`row_statistics` for ``p`` problems and ``m`` columns: ``budget`` scores a chunk."""
    per_pair = 1 if hasattr(critic, "embed_x") else getattr(critic, "hidden", 1)  # concat: [P, rows, M, hidden]
    return max(1, min(m, budget // per_pair // max(1, p * m)))


def heldout_bound(critic, x, y: torch.Tensor, bound: str | Bound = "infonce", x_mask=None,
                  y_mask=None, *, n_groups: int = 10, budget: int = SCORE_BUDGET,
                  columns: int | None = None, rows: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Bound on all M held-out rows and its batch-means standard error, both ``[P]`` nats.

    Parameters
    ----------
    critic : a critic from :mod:`estimators.critics` (or any module with the same call).
    x, y : Tensor of shape (P, M, x_dim), (P, M, y_dim), already preprocessed like the training data;
        ``x`` may instead be a row-range callable (see :func:`row_statistics`).
    bound : a name or :class:`Bound`; only its estimate is used (no training state).
    n_groups : number of disjoint row groups for the standard error.
    columns : when set and below M, the rows are cut into ``ceil(M / columns)`` consecutive groups of
        (nearly) equal size and each row is scored against its own group's rows only: ``M * columns``
        scores per problem instead of ``M²``, and InfoNCE's ceiling ``log`` of the smallest group size instead
        of ``log M``. Every row still counts (the standard error is that of M rows).
    rows : rows per score chunk (see :func:`row_statistics`).
    """
    bound = get_bound(bound)
    m = y.shape[1]
    if m < 2:
        raise ValueError(f"the held-out set has {m} rows; at least 2 are needed")
    if not callable(x) and tuple(x.shape[:2]) != tuple(y.shape[:2]):
        raise ValueError(f"x has shape {tuple(x.shape)} but y has shape {tuple(y.shape)}; "
                         "both must be [P, M, d] with the same P and M")
    if columns is not None and columns < 2:
        raise ValueError(f"columns={columns} must be at least 2 (each row needs a negative)")
    x_rows = x if callable(x) else (lambda start, stop: x[:, start:stop])
    edges = group_edges(m, columns)
    coded = _coded(critic, y, bound.row_keys, bound.clip)
    if coded is not None:  # every column group at once
        full = _coded_row_statistics(critic, x_rows, coded, y_mask, edges, x_mask)
        stats = [{k: v[:, s0:s1] for k, v in full.items()} for s0, s1 in itertools.pairwise(edges)]
        return _grouped_with_stderr(bound, stats, edges, n_groups=n_groups)
    stats = [row_statistics(critic, lambda a, b, s=start: x_rows(s + a, s + b), y[:, start:stop], x_mask, y_mask,
                            clip=bound.clip, budget=budget, keys=bound.row_keys, rows=rows)
             for start, stop in itertools.pairwise(edges)]
    return _grouped_with_stderr(bound, stats, edges, n_groups=n_groups)


def group_edges(m: int, columns: int | None) -> list[int]:
    """Start rows of the column groups of :func:`heldout_bound` and ``m`` (``[0, m]`` for one group)."""
    n_col = 1 if columns is None or columns >= m else math.ceil(m / columns)
    return [int(t[0]) for t in torch.arange(m).tensor_split(n_col)] + [m]


def _mean_with_stderr(terms: torch.Tensor, g: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A bound that is a mean over rows, from its rows' terms ``[P, M]``: the mean and the batch-means standard
    error over ``g`` consecutive groups of rows (what the general recombination computes, in a few kernels: the
    validation of a shared RSMI step had spent ~3 ms of Python per call recombining 12 column groups x 10 groups)."""
    per_group = torch.stack([t.mean(dim=1) for t in terms.tensor_split(g, dim=1)], dim=1)
    return terms.mean(dim=1), per_group.std(dim=1) / math.sqrt(g)


def _grouped_with_stderr(bound: Bound, stats: list[dict], edges: list[int], *, n_groups: int):
    """Value and batch-means stderr from the row statistics of each column group (``edges``: their start rows)."""
    if len(stats) == 1:
        return bound_with_stderr(bound, stats[0], n_groups=n_groups)
    m = edges[-1]
    g = max(2, min(n_groups, m // 2))
    terms = [bound.row_values(part, s1 - s0) for part, (s0, s1) in zip(stats, itertools.pairwise(edges))]
    if terms[0] is not None:
        return _mean_with_stderr(torch.cat(terms, dim=1), g)

    def value_of(a: int, b: int) -> torch.Tensor:
        """The bound over rows ``a:b``: the row-weighted mean of each column group's bound on its share."""
        total = 0.0
        for k, (s0, s1) in enumerate(itertools.pairwise(edges)):
            lo, hi = max(a, s0), min(b, s1)
            if hi > lo:
                part = {key: v[:, lo - s0:hi - s0] for key, v in stats[k].items()}
                total = total + (hi - lo) * bound.from_row_statistics(part, s1 - s0)
        return total / (b - a)

    cuts = [int(t[0]) for t in torch.arange(m).tensor_split(g)] + [m]
    per_group = torch.stack([value_of(a, b) for a, b in itertools.pairwise(cuts)], dim=1)
    return value_of(0, m), per_group.std(dim=1) / math.sqrt(g)


def bound_with_stderr(bound: Bound, stats: dict[str, torch.Tensor], *, n_groups: int = 10):
    """The bound from row statistics over all M rows, and its batch-means standard error (``[P]`` each)."""
    m = stats["diag"].shape[1]
    g = max(2, min(n_groups, m // 2))
    terms = bound.row_values(stats, m)
    if terms is not None:
        return _mean_with_stderr(terms, g)
    value = bound.from_row_statistics(stats, m)
    groups = torch.tensor_split(torch.arange(m, device=stats["diag"].device), g)
    per_group = torch.stack([bound.from_row_statistics({k: v[:, idx] for k, v in stats.items()}, m) for idx in groups],
                            dim=1)
    return value, per_group.std(dim=1) / math.sqrt(g)
