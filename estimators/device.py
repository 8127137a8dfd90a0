"""Device selection (``"auto"`` means CUDA when present, else CPU) and the matmul precision of training."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch

__all__ = ["resolve_device", "settle_cpu_threads", "training_precision"]

_settled = False


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """Turn ``"auto"``/``None``/a name into a ``torch.device``, refusing CUDA when it is absent (and, for the CPU,
    :func:`settle_cpu_threads` first)."""
    if device is None or device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={str(device)!r} was requested but CUDA is not available; use device='cpu' or 'auto'")
    if dev.type == "cpu":
        settle_cpu_threads()
    return dev


def settle_cpu_threads() -> None:
    """Run torch's vectorised ``exp`` and ``log`` once on every intra-op thread (once per process).

    Measured on this project's 2-core VMs (torch 2.13.0 CPU wheel, 2026-12-02): in ~2 % of fresh processes
    under load (8 of 430), the first ``logsumexp`` computed once the thread pool was up came out ~1e-5 off
    (relative) on every row one worker thread computed, and never again in that process — harmless to an
    estimate, but it broke "same seed, same bytes" and a test comparing two paths to 1e-5
    (``tests/estimators/test_heldout.py``). With one ``logsumexp`` first, before anything else: 0 of 420.
    Called by :func:`resolve_device` and when the engine's graph code is imported (after MKL's reproducibility
    is set, :func:`graphs.distributed.strict_blas`)."""
    global _settled
    if not _settled:
        _settled = True
        torch.logsumexp(torch.zeros(2 * max(1, torch.get_num_threads()), 2048), dim=1)  # a chunk per thread, or more


@contextmanager
def training_precision(device: torch.device) -> Iterator[None]:
    """TF32 float32 matmuls on CUDA inside a training step; the previous setting is restored on exit.

    Where it is used: the critic's and filter's forward and backward passes, whose minibatch noise is
    far above TF32's 10-bit mantissa. Where it is not: held-out MI and co-occurrence statistics stay in
    full float32 (they are the numbers we report). Half-precision autocast is not used at all: the
    logsumexp of InfoNCE over a batch loses the small MI differences it has to resolve. No-op on CPU.
    """
    if torch.device(device).type != "cuda":
        yield
        return
    before = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("high")
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(before)
