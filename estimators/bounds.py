"""Variational lower bounds on mutual information from a batched critic score tensor.

Every bound is a pure function of ``scores : Tensor of shape (P, B, B)``: P independent
problems, ``scores[p, i, j] = f_p(x_i, y_j)`` for B paired samples, so the positive
(joint) pairs sit on the diagonal and the off-diagonal entries are samples of the product
of marginals. Each returns a ``Tensor of shape (P,)`` in nats.

=========  ==========================================================================
bound      formula (``f`` the critic, p the joint, q = p(x)p(y))
=========  ==========================================================================
infonce    ``E_i[f_ii - log (1/B) sum_j exp f_ij]``  (van den Oord et al. 2018), <= log B
nwj        ``E_p[f] - E_q[exp(f - 1)]``  (Nguyen, Wainwright & Jordan 2010; "f-1" form
           of Poole et al. 2019, so the optimal critic is ``1 + log p/q``)
dv         ``E_p[f] - log E_q[exp f]``  (Donsker-Varadhan; MINE, Belghazi et al. 2018)
smile      ``E_p[f] - log E_q[clip(exp f, e^-tau, e^tau)]``  (Song & Ermon 2020)
=========  ==========================================================================

``get_bound(name)`` returns a :class:`Bound` that also knows the *training objective*
(what to maximise; for ``dv`` it carries MINE's moving-average gradient correction, for
``smile`` the Jensen-Shannon gradient of Song & Ermon), the bound's ceiling, and the same
formula from per-row statistics of a score matrix too large to hold (``from_row_statistics``,
used by :mod:`estimators.heldout`): each bound's formula lives in its class alone.

References
----------
Poole, Ozair, van den Oord, Alemi & Tucker, "On variational bounds of mutual information", ICML 2019.
Belghazi et al., "Mutual information neural estimation", ICML 2018.
Song & Ermon, "Understanding the limitations of variational mutual information estimators", ICLR 2020.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from estimators.validation import check_choice

__all__ = ["BOUNDS", "Bound", "dv", "get_bound", "infonce", "js", "nwj", "score_rows", "smile"]

BOUNDS = ("infonce", "nwj", "dv", "smile")


def _check_scores(scores: torch.Tensor) -> None:
    if not isinstance(scores, torch.Tensor) or scores.ndim != 3 or scores.shape[1] != scores.shape[2]:
        shape = tuple(scores.shape) if isinstance(scores, torch.Tensor) else type(scores).__name__
        raise ValueError(f"scores must be a tensor of shape (P, B, B), got {shape}; add a leading problem dimension")
    if scores.shape[1] < 2:
        raise ValueError(f"scores need a batch of at least 2 samples, got B={scores.shape[1]}")


def _diag(scores: torch.Tensor) -> torch.Tensor:
    """Positive-pair scores, ``[P, B]``."""
    return torch.diagonal(scores, dim1=1, dim2=2)


def score_rows(scores: torch.Tensor, key: str, clip: float | None = None) -> dict[str, torch.Tensor]:
    """The row statistics every bound is written in, of a whole ``[P, B, B]`` score matrix.

    ``diag`` (``f_ii``, ``[P, B]``) and ``key``: ``"lse"`` (``logsumexp_j f_ij``), ``"lse_off"``
    (``logsumexp_{j != i} f_ij``) or ``"lse_off_clip"`` (the same over ``f`` clamped to ``[-clip, clip]``).
    :func:`estimators.heldout.row_statistics` computes the same for a matrix too large to hold.
    """
    if key == "lse":
        return {"diag": _diag(scores), "lse": torch.logsumexp(scores, dim=2)}
    if key == "lse_off_clip" and clip is not None and math.isfinite(clip):
        scores, diag = scores.clamp(-clip, clip), _diag(scores)
    else:
        diag = _diag(scores)
    eye = torch.eye(scores.shape[1], dtype=torch.bool, device=scores.device)
    return {"diag": diag, key: torch.logsumexp(scores.masked_fill(eye, -math.inf), dim=2)}


def _log_marginal(lse_off: torch.Tensor, m: int) -> torch.Tensor:
    """``log mean_{i != j} exp f_ij`` over ``r`` rows against ``m`` columns, from row ``logsumexp_{j != i}``."""
    return torch.logsumexp(lse_off, dim=1) - math.log(lse_off.shape[1] * (m - 1))


def _infonce_rows(stats: dict[str, torch.Tensor], m: int) -> torch.Tensor:
    return (stats["diag"] - stats["lse"]).mean(dim=1) + math.log(m)


def _nwj_rows(stats: dict[str, torch.Tensor], m: int) -> torch.Tensor:
    return stats["diag"].mean(dim=1) - torch.exp(_log_marginal(stats["lse_off"], m) - 1.0)


def _dv_rows(stats: dict[str, torch.Tensor], m: int, key: str = "lse_off") -> torch.Tensor:
    return stats["diag"].mean(dim=1) - _log_marginal(stats[key], m)


def _offdiag_logmeanexp(scores: torch.Tensor) -> torch.Tensor:
    """``log mean_{i != j} exp(scores[p, i, j])`` per problem, ``[P]`` (numerically stable)."""
    return _log_marginal(score_rows(scores, "lse_off")["lse_off"], scores.shape[1])


def infonce(scores: torch.Tensor) -> torch.Tensor:
    """InfoNCE (CPC) lower bound, ``[P]`` nats; never exceeds ``log B``.

    ``I >= mean_i [ f_ii - logsumexp_j f_ij ] + log B`` (Poole et al. 2019, eq. 12): each
    positive pair is classified against the B-1 negatives in its row.
    """
    _check_scores(scores)
    return _infonce_rows(score_rows(scores, "lse"), scores.shape[1])


def nwj(scores: torch.Tensor) -> torch.Tensor:
    """NWJ / f-divergence lower bound, ``[P]`` nats: ``E_p[f] - E_q[exp(f - 1)]``.

    The marginal term averages the ``B(B-1)`` off-diagonal pairs (Poole et al. 2019, eq. 9
    with ``a(y) = e``). Unbiased but high-variance when the MI is large (variance ~ e^I).
    """
    _check_scores(scores)
    return _nwj_rows(score_rows(scores, "lse_off"), scores.shape[1])


def dv(scores: torch.Tensor) -> torch.Tensor:
    """Donsker-Varadhan (MINE) bound, ``[P]`` nats: ``E_p[f] - log E_q[exp f]``.

    Off-diagonal pairs estimate the product-of-marginals expectation (Belghazi et al. 2018).
    """
    _check_scores(scores)
    return _dv_rows(score_rows(scores, "lse_off"), scores.shape[1])


def smile(scores: torch.Tensor, clip: float = 5.0) -> torch.Tensor:
    """SMILE estimate, ``[P]`` nats: ``E_p[f] - log E_q[clip(exp f, e^-clip, e^clip)]``.

    Clipping the density ratio bounds the variance of the partition term at the price
    of a small bias (Song & Ermon 2020, eq. 17); ``clip=math.inf`` gives back :func:`dv`.
    """
    _check_scores(scores)
    if not clip > 0:
        raise ValueError(f"clip must be > 0, got {clip}; use e.g. clip=5.0")
    return _dv_rows(score_rows(scores, "lse_off_clip", clip), scores.shape[1], "lse_off_clip")


def js(scores: torch.Tensor) -> torch.Tensor:
    """Jensen-Shannon (f-GAN) objective ``E_p[-softplus(-f)] - E_q[softplus(f)]``, ``[P]``.

    Not an MI bound; its maximiser is ``f = log p/q``, which is why SMILE trains on it
    (Poole et al. 2019, Sec. 2.3; Song & Ermon 2020).
    """
    _check_scores(scores)
    b = scores.shape[1]
    d = _diag(scores)
    first = -F.softplus(-d).mean(dim=1)
    second = (F.softplus(scores).sum(dim=(1, 2)) - F.softplus(d).sum(dim=1)) / (b * (b - 1))
    return first - second


def _straight(value: torch.Tensor, surrogate: torch.Tensor) -> torch.Tensor:
    """A tensor equal to ``value`` whose gradient is that of ``surrogate``."""
    return value.detach() + surrogate - surrogate.detach()


class Bound:
    """A named MI bound: what to report, what to maximise, and its ceiling.

    Create one per training run (the ``dv`` bound is stateful). ``estimate(scores)`` is the
    value to report; ``objective(scores)`` is the differentiable quantity to *maximise*
    (equal in value to ``estimate`` but possibly with a corrected gradient);
    ``ceiling(batch_size)`` is the largest value the estimate can take
    (``log B`` for InfoNCE, ``inf`` otherwise). ``from_row_statistics(stats, m)`` is ``estimate``
    from per-row reductions of the scores (:func:`estimators.heldout.row_statistics`; ``clip``
    says which clipped reduction it needs, ``None`` = none).
    """

    name = "bound"
    clip: float | None = None
    # the row statistics ``from_row_statistics`` reads besides ``diag`` (each costs a pass over the scores)
    row_keys: tuple[str, ...] = ("lse", "lse_off")

    def estimate(self, scores: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def row_values(self, stats: dict[str, torch.Tensor], m: int) -> torch.Tensor | None:
        """Per-row terms ``[P, r]`` whose mean over rows is :meth:`from_row_statistics`, for a bound that is a
        mean over rows (InfoNCE); None for the others."""
        return None

    def from_row_statistics(self, stats: dict[str, torch.Tensor], m: int) -> torch.Tensor:
        """The estimate ``[P]`` for ``r`` rows of an ``[r, m]`` score matrix, from its row statistics.

        ``stats`` holds ``[P, r]`` tensors: ``diag`` (``f_ii``), ``lse`` (``logsumexp_j f_ij``),
        ``lse_off`` (``logsumexp_{j != i} f_ij``) and, when ``clip`` is set, ``lse_off_clip``
        (the same over ``f`` clamped to ``[-clip, clip]``). With all ``m`` rows it equals ``estimate``.
        """
        raise NotImplementedError

    def objective(self, scores: torch.Tensor) -> torch.Tensor:
        return self.estimate(scores)

    def ceiling(self, batch_size: int) -> float:
        return math.inf

    def reset(self) -> None:
        """Forget any training state (the DV moving average)."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class InfoNCEBound(Bound):
    name = "infonce"
    row_keys = ("lse",)

    def estimate(self, scores):
        return infonce(scores)

    def from_row_statistics(self, stats, m):
        return _infonce_rows(stats, m)

    def row_values(self, stats, m):
        return stats["diag"] - stats["lse"] + math.log(m)

    def ceiling(self, batch_size: int) -> float:
        return math.log(batch_size)


class NWJBound(Bound):
    name = "nwj"
    row_keys = ("lse_off",)

    def estimate(self, scores):
        return nwj(scores)

    def from_row_statistics(self, stats, m):
        return _nwj_rows(stats, m)


class DVBound(Bound):
    """DV with MINE's bias-corrected gradient (Belghazi et al. 2018, Sec. 3.2).

    The minibatch gradient of ``log E_q[e^f]`` is ``E_q[e^f grad f] / E_q[e^f]``; its
    denominator is replaced by an exponential moving average ``m_t`` (per problem), so the
    objective's gradient is ``grad E_p[f] - grad E_q[e^f] / m_t``. Its value equals
    :func:`dv`. ``ema_decay`` is MINE's ``1 - alpha`` (0.99 by default).
    """

    name = "dv"
    row_keys = ("lse_off",)

    def __init__(self, ema_decay: float = 0.99):
        if not 0.0 <= ema_decay < 1.0:
            raise ValueError(f"ema_decay must be in [0, 1), got {ema_decay}")
        self.ema_decay = ema_decay
        self._log_ema: torch.Tensor | None = None

    def reset(self) -> None:
        self._log_ema = None

    def estimate(self, scores):
        return dv(scores)

    def from_row_statistics(self, stats, m):
        return _dv_rows(stats, m)

    def objective(self, scores):
        _check_scores(scores)
        joint = _diag(scores).mean(dim=1)
        log_marg = _offdiag_logmeanexp(scores)
        current = log_marg.detach()
        if self._log_ema is None or self._log_ema.shape != current.shape:
            self._log_ema = current.clone()
        else:
            a = self.ema_decay
            self._log_ema = torch.logaddexp(self._log_ema + math.log(a), current + math.log1p(-a))
        surrogate = joint - torch.exp(log_marg - self._log_ema)
        return _straight(joint - log_marg, surrogate)

    def __repr__(self) -> str:
        return f"DVBound(ema_decay={self.ema_decay})"


class SMILEBound(Bound):
    """SMILE: reports :func:`smile`, trains on the Jensen-Shannon gradient (Song & Ermon 2020)."""

    name = "smile"
    row_keys = ()

    def __init__(self, clip: float = 5.0):
        if not clip > 0:
            raise ValueError(f"clip must be > 0, got {clip}; use e.g. clip=5.0")
        self.clip = float(clip)

    def estimate(self, scores):
        return smile(scores, clip=self.clip)

    def from_row_statistics(self, stats, m):
        return _dv_rows(stats, m, "lse_off_clip")

    def objective(self, scores):
        return _straight(smile(scores, clip=self.clip), js(scores))

    def __repr__(self) -> str:
        return f"SMILEBound(clip={self.clip})"


_CLASSES = {"infonce": InfoNCEBound, "nwj": NWJBound, "dv": DVBound, "smile": SMILEBound}


def get_bound(name: str | Bound, **options) -> Bound:
    """Return a fresh :class:`Bound` for ``name`` in ``{"infonce", "nwj", "dv", "smile"}``.

    ``options`` go to the bound: ``clip`` for smile (default 5.0), ``ema_decay`` for dv
    (default 0.99). A :class:`Bound` instance is returned unchanged.
    """
    if isinstance(name, Bound):
        return name
    check_choice(name, BOUNDS, name="bound")
    try:
        return _CLASSES[name](**options)
    except TypeError as err:
        raise ValueError(f"bound {name!r} does not accept options {sorted(options)}: {err}") from err
