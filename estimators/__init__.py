"""Mutual-information estimation: closed forms, kNN, and neural variational bounds.

Knows nothing of ``rsmi_nn`` or ``graphs``; every bound is a pure function of a critic's
score tensor ``[P, B, B]`` (P independent problems, positives on the diagonal).
"""

from estimators.batched import BatchedLinear, BatchedMLP
from estimators.device import resolve_device
from estimators.validation import check_samples

__all__ = ["BatchedLinear", "BatchedMLP", "resolve_device", "check_samples"]
