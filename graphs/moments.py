"""Exact streaming sufficient statistics of activations: counts, means, variances, co-moments.

Batches are folded in with Chan, Golub & LeVeque's parallel update (float64), so
statistics over uneven batches equal the one-shot ones to rounding, and two partial
results computed on different shards can be merged. The full co-moment (Gram) matrix and
co-firing counts are kept only while ``U`` is small enough (``max_gram_units``); for large
``U`` the graph builder uses the per-unit moments and a tile-wise second pass instead.

References
----------
T. F. Chan, G. H. Golub, R. J. LeVeque, "Updating formulae and a pairwise algorithm for
computing sample variances", 1979.
"""

from __future__ import annotations

import torch

from estimators.device import Scratch
from estimators.validation import as_tensor, check_positive_int

__all__ = ["MomentTree", "ShiftedSums", "StreamingMoments"]


class StreamingMoments:
    """Streaming count / mean / variance (and optionally co-moments and co-firing counts).

    Parameters
    ----------
    num_units : int
        ``U``, the number of columns of every batch.
    gram : bool or "auto"
        Keep the ``[U, U]`` co-moment matrix (float64, ``8 U²`` bytes). ``"auto"``: only when
        ``U <= max_gram_units``; ``True`` above that limit is an error.
    max_gram_units : int
        The largest ``U`` for which the Gram matrix is kept (default 4096, i.e. 128 MiB).
    threshold : float or Tensor of shape (U,), optional
        Per-unit firing threshold: when given, counts of ``x > threshold`` per unit
        (``active``) and, with the Gram matrix, per pair (``coactive``) are kept for PMI.

    Attributes
    ----------
    count : int
    mean, m2, min, max : float64 Tensor of shape (U,)
        ``m2`` is the sum of squared deviations from the mean.
    comoment : float64 Tensor of shape (U, U) or None
        Sum of products of deviations.
    active : float64 Tensor (U,) or None; coactive : float64 Tensor (U, U) or None.
    """

    def __init__(self, num_units: int, *, gram: bool | str = "auto", max_gram_units: int = 4096,
                 threshold=None, device="cpu"):
        self.num_units = check_positive_int(num_units, name="num_units")
        max_gram_units = check_positive_int(max_gram_units, name="max_gram_units")
        if gram not in (True, False, "auto"):
            raise ValueError(f"gram must be True, False or 'auto', got {gram!r}")
        if gram is True and num_units > max_gram_units:
            raise ValueError(
                f"gram=True needs a {num_units}×{num_units} matrix but max_gram_units={max_gram_units}; "
                "use build_graph's tile-wise pass for large U, or raise max_gram_units"
            )
        self.keep_gram = bool(gram is True or (gram == "auto" and num_units <= max_gram_units))
        u, dev = num_units, torch.device(device)
        self.count = 0
        self.mean = torch.zeros(u, dtype=torch.float64, device=dev)
        self.m2 = torch.zeros(u, dtype=torch.float64, device=dev)
        self.min = torch.full((u,), torch.inf, dtype=torch.float64, device=dev)
        self.max = torch.full((u,), -torch.inf, dtype=torch.float64, device=dev)
        self.comoment = torch.zeros(u, u, dtype=torch.float64, device=dev) if self.keep_gram else None
        self.threshold = None
        if threshold is not None:
            thr = as_tensor(threshold, name="threshold", dtype=torch.float64, device=dev).reshape(-1)
            if thr.numel() not in (1, u):
                raise ValueError(f"threshold must be a number or have {u} entries (one per unit), got {thr.numel()}")
            self.threshold = thr.expand(u).clone()
        self.active = torch.zeros(u, dtype=torch.float64, device=dev) if threshold is not None else None
        self.coactive = (torch.zeros(u, u, dtype=torch.float64, device=dev)
                         if threshold is not None and self.keep_gram else None)

    def update(self, batch) -> StreamingMoments:
        """Fold in a batch of shape ``(b, U)``; returns ``self``."""
        per_unit = not self.keep_gram and self.threshold is None  # no float64 copy of the batch needed
        if per_unit and isinstance(batch, torch.Tensor) and batch.dtype.is_floating_point:
            x = batch.detach().to(self.mean.device)
        else:
            x = as_tensor(batch, name="batch", dtype=torch.float64, device=self.mean.device)
        if x.ndim != 2 or x.shape[1] != self.num_units:
            raise ValueError(f"batch must have shape (b, {self.num_units}), got {tuple(x.shape)}")
        b = x.shape[0]
        if b == 0:
            return self
        mean_b, m2_b = _shifted_moments(x)
        lo, hi = x.amin(0).double(), x.amax(0).double()  # (aminmax over dim 0 is ~10x slower on CPU)
        comoment = None
        if self.keep_gram:
            dev = x - mean_b
            comoment = dev.T @ dev
        other = StreamingMoments.__new__(StreamingMoments)
        other.__dict__.update(num_units=self.num_units, keep_gram=self.keep_gram, threshold=self.threshold, count=b,
                              mean=mean_b, m2=m2_b, min=lo, max=hi, comoment=comoment)
        if self.threshold is not None:
            fired = (x > self.threshold).double()
            other.active = fired.sum(0)
            other.coactive = fired.T @ fired if self.keep_gram else None
        else:
            other.active = other.coactive = None
        return self.merge(other)

    def merge(self, other: StreamingMoments) -> StreamingMoments:
        """Combine with statistics of other samples (Chan's pairwise update); returns ``self``."""
        if other.num_units != self.num_units or other.keep_gram != self.keep_gram:
            raise ValueError("cannot merge StreamingMoments with different num_units or gram settings")
        if (self.threshold is None) != (other.threshold is None) or (
                self.threshold is not None and not torch.equal(self.threshold, other.threshold)):
            raise ValueError("cannot merge StreamingMoments built with different thresholds")
        n_a, n_b = self.count, other.count
        if n_b == 0:
            return self
        n = n_a + n_b
        delta = other.mean - self.mean
        self.mean = self.mean + delta * (n_b / n)
        self.m2 = self.m2 + other.m2 + delta * delta * (n_a * n_b / n)
        if self.keep_gram:
            self.comoment = self.comoment + other.comoment + torch.outer(delta, delta) * (n_a * n_b / n)
        self.min = torch.minimum(self.min, other.min)
        self.max = torch.maximum(self.max, other.max)
        if self.active is not None:
            self.active = self.active + other.active
            if self.coactive is not None:
                self.coactive = self.coactive + other.coactive
        self.count = n
        return self

    def state(self) -> dict[str, torch.Tensor]:
        """The per-unit statistics as tensors (``count`` [], ``mean``/``m2``/``min``/``max`` [U]); no Gram matrix
        or co-firing counts. :meth:`from_state` reads them back."""
        if self.keep_gram or self.threshold is not None:
            raise ValueError("state() holds per-unit statistics only; build the moments with gram=False, no threshold")
        return {"count": torch.tensor(self.count, dtype=torch.int64), "mean": self.mean, "m2": self.m2,
                "min": self.min, "max": self.max}

    @classmethod
    def from_state(cls, state: dict[str, torch.Tensor]) -> StreamingMoments:
        """Per-unit moments from :meth:`state`'s tensors (the same bits)."""
        mean = state["mean"]
        out = cls(mean.numel(), gram=False, device=mean.device)
        out.count = int(state["count"])
        out.mean, out.m2, out.min, out.max = (state[k].to(torch.float64) for k in ("mean", "m2", "min", "max"))
        return out

    def var(self, ddof: int = 0) -> torch.Tensor:
        """Per-unit variance (float64, ``ddof=0``: population)."""
        if self.count - ddof <= 0:
            raise ValueError(f"variance with ddof={ddof} needs more than {ddof} samples, have {self.count}")
        return self.m2 / (self.count - ddof)

    def std(self, ddof: int = 0) -> torch.Tensor:
        return self.var(ddof).sqrt()

    def constant_units(self) -> torch.Tensor:
        """LongTensor of the units whose every sample had the same value."""
        return (self.max <= self.min).nonzero().flatten()

    def _need_gram(self, what: str) -> torch.Tensor:
        if self.comoment is None:
            raise ValueError(f"{what} needs the Gram matrix, which is not kept for U={self.num_units}; "
                             "pass gram=True (small U) or use build_graph")
        return self.comoment

    def covariance(self, ddof: int = 1) -> torch.Tensor:
        """``[U, U]`` covariance (float64), like ``numpy.cov`` with ``ddof``."""
        c = self._need_gram("covariance")
        if self.count - ddof <= 0:
            raise ValueError(f"covariance with ddof={ddof} needs more than {ddof} samples, have {self.count}")
        return c / (self.count - ddof)

    def correlation(self) -> torch.Tensor:
        """``[U, U]`` Pearson correlation (float64), like ``numpy.corrcoef``; NaN rows for constant units."""
        c = self._need_gram("correlation")
        d = c.diagonal().sqrt()
        return c / torch.outer(d, d)

    def pmi(self) -> torch.Tensor:
        """``[U, U]`` co-firing PMI ``log(p_ij / (p_i p_j))`` in nats (``-inf`` where a pair never co-fires)."""
        if self.coactive is None:
            raise ValueError("pmi needs a threshold and the Gram matrix; pass threshold=... and gram=True")
        n = float(self.count)
        return torch.log(self.coactive * n / torch.outer(self.active, self.active))


def _shifted_moments(x: torch.Tensor, chunk: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and sum of squared deviations (float64, [U]) of a ``(b, U)`` batch of any float dtype, from float64
    sums of deviations from its first row taken ``chunk`` rows at a time (precision: see :class:`ShiftedSums`)."""
    shift = x[0].to(torch.float64)
    s1 = torch.zeros_like(shift)
    s2 = torch.zeros_like(shift)
    work = Scratch()
    for a in range(0, x.shape[0], chunk):
        part = x[a : a + chunk]
        d = work.take(tuple(part.shape), shift).copy_(part).sub_(shift)
        s1 += d.sum(0)
        s2 += d.square_().sum(0)
    n = x.shape[0]
    return shift + s1 / n, (s2 - s1.square() / n).clamp_(min=0.0)


class MomentTree:
    """Merge per-window :class:`StreamingMoments` in a fixed binary tree over the window indices.

    Window ``w`` is leaf ``(0, w)``; node ``(j, k)`` is ``node(j-1, 2k).merge(node(j-1, 2k+1))`` and a node
    without its sibling (past the last window) is passed up unchanged. Every merge is fixed by the windows'
    indices alone, so any contiguous split of the windows — between the ranks of a recording — gives the same
    bits as one process. Each holder keeps only the largest finished subtrees of its windows (``O(log W)``
    nodes): :meth:`add` windows in order, gather every holder's :attr:`nodes`, then :meth:`total`.
    """

    def __init__(self):
        self.nodes: list[tuple[int, int, StreamingMoments]] = []  # (level, index, moments), left to right

    def add(self, window: int, moments: StreamingMoments) -> None:
        """Add window ``window``'s moments (windows in increasing order, contiguous within this holder)."""
        level, index = 0, window
        while index % 2 == 1 and self.nodes and self.nodes[-1][:2] == (level, index - 1):
            moments = self.nodes.pop()[2].merge(moments)
            level, index = level + 1, index // 2
        self.nodes.append((level, index, moments))

    @staticmethod
    def total(nodes: list[tuple[int, int, StreamingMoments]]) -> StreamingMoments:
        """The moments of all windows from every holder's nodes (any order); merges in place."""
        if not nodes:
            raise ValueError("no window was recorded")
        todo = {(level, index): m for level, index, m in nodes}
        while len(todo) > 1:
            level = min(lv for lv, _ in todo)
            for _, index in sorted(k for k in todo if k[0] == level):
                if (level, index) not in todo:  # merged into its left sibling already
                    continue
                m = todo.pop((level, index))
                if index % 2 == 0 and (level, index + 1) in todo:
                    m = m.merge(todo.pop((level, index + 1)))
                todo[(level + 1, index // 2)] = m
        return next(iter(todo.values()))


class ShiftedSums:
    """Per-unit count, mean and variance from sums of deviations from the first sample.

    The cheap one-pass alternative to :class:`StreamingMoments` for large ``U``: per batch one
    subtraction and two column sums (float64), no Welford update and no min/max. With the
    shift ``s`` one of the samples, ``n·(mean - s)² <= n·m2``, so ``m2 = Σ(x-s)² - (Σ(x-s))²/n``
    loses at most about ``(n + 1)·ε₆₄`` of its relative precision (the raw power-sum formula
    can lose all of it); and a unit is constant exactly when every deviation is zero (``x - s``
    of two different floats is never zero), which makes ``m2`` exactly zero.

    Attributes
    ----------
    count : int
    shift : float64 Tensor (U,) or None (no sample yet)
    s1, s2 : float64 Tensor (U,)
        ``Σ(x - shift)`` and ``Σ(x - shift)²``.
    """

    def __init__(self, num_units: int, device="cpu"):
        self.num_units = check_positive_int(num_units, name="num_units")
        self.count, self.shift = 0, None
        self.s1 = torch.zeros(num_units, dtype=torch.float64, device=device)
        self.s2 = torch.zeros(num_units, dtype=torch.float64, device=device)
        self._work = Scratch()

    def update(self, batch: torch.Tensor) -> torch.Tensor:
        """Fold in a ``(b, U)`` batch (any float dtype); returns this batch's ``Σ(x - shift)²``
        per unit, which is non-finite exactly when the batch holds a NaN or an infinity."""
        if batch.ndim != 2 or batch.shape[1] != self.num_units:
            raise ValueError(f"batch must have shape (b, {self.num_units}), got {tuple(batch.shape)}")
        d = self._work.take(tuple(batch.shape), self.s1).copy_(batch)  # one float64 chunk, reused
        if d.shape[0] == 0:
            return torch.zeros_like(self.s2)
        if self.shift is None:
            self.shift = d[0].clone()
        d.sub_(self.shift)
        self.s1 += d.sum(0)
        part = d.square_().sum(0)
        self.s2 += part
        self.count += d.shape[0]
        return part

    @property
    def mean(self) -> torch.Tensor:
        return self.shift + self.s1 / self.count

    @property
    def m2(self) -> torch.Tensor:
        """Sum of squared deviations from the mean (float64, >= 0)."""
        return (self.s2 - self.s1.square() / self.count).clamp_(min=0.0)

    def var(self) -> torch.Tensor:
        """Per-unit population variance (float64)."""
        return self.m2 / self.count

    def constant_units(self) -> torch.Tensor:
        """LongTensor of the units whose every sample had the same value (``m2 == 0``)."""
        return (self.m2 == 0).nonzero().flatten()

