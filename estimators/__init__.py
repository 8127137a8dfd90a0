"""Mutual-information estimation: closed forms, kNN, and neural variational bounds.

Knows nothing of ``rsmi_nn`` or ``graphs``; every bound is a pure function of a critic's
score tensor ``[P, B, B]`` (P independent problems, positives on the diagonal).
Public names are imported lazily (PEP 562), so ``import estimators`` stays cheap.
"""

from estimators.lazy import lazy_exports

_EXPORTS = {
    "BatchedLinear": "estimators.batched",
    "BatchedMLP": "estimators.batched",
    "resolve_device": "estimators.device",
    "check_samples": "estimators.validation",
    "gaussian_mi": "estimators.reference",
    "cca_mi": "estimators.reference",
    "ksg_mi": "estimators.reference",
    "canonical_correlations": "estimators.reference",
    "infonce": "estimators.bounds",
    "nwj": "estimators.bounds",
    "dv": "estimators.bounds",
    "smile": "estimators.bounds",
    "get_bound": "estimators.bounds",
    "Bound": "estimators.bounds",
    "SeparableCritic": "estimators.critics",
    "ConcatCritic": "estimators.critics",
    "estimate_mi": "estimators.estimate",
    "MIResult": "estimators.estimate",
    "train_problems": "estimators.training",
    "TrainSettings": "estimators.training",
    "TrainState": "estimators.training",
}

__all__ = sorted(_EXPORTS)

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, globals())
