"""Device selection (``"auto"`` means CUDA when present, else CPU) and the matmul precision of training."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch

__all__ = ["resolve_device", "training_precision"]


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """Turn ``"auto"``/``None``/a name into a ``torch.device``, refusing CUDA when it is absent."""
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={str(device)!r} was requested but CUDA is not available; use device='cpu' or 'auto'")
    return dev


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
