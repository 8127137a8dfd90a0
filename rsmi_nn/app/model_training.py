"""Training the bundled models (``digits-mlp``, ``tiny-lm``) and the experiments' model families, reproducibly
on CPU: one intra-op thread, a forked and seeded global RNG, minibatches in a seeded order per epoch.

Not the MI estimators' training loop (:func:`estimators.training.train_problems`): these are ordinary supervised
models whose bytes must not depend on the machine's thread count, so that a cached model is the model.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch

__all__ = ["minibatches", "reproducible_cpu", "train_step"]


@contextmanager
def reproducible_cpu(seed: int, *, deterministic: bool = False) -> Iterator[None]:
    """For the ``with`` block: one intra-op thread, the global RNG forked and seeded with ``seed`` (and, with
    ``deterministic``, torch's deterministic algorithms); the caller's settings come back afterwards."""
    threads, was_deterministic = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    torch.set_num_threads(1)
    if deterministic:
        torch.use_deterministic_algorithms(True)
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            yield
    finally:
        torch.use_deterministic_algorithms(was_deterministic)
        torch.set_num_threads(threads)


def minibatches(num_rows: int, batch_size: int, epochs: int, gen: torch.Generator) -> Iterator[torch.Tensor]:
    """The row indices of every minibatch: each epoch a fresh permutation of ``range(num_rows)`` drawn from
    ``gen``, cut into slices of ``batch_size`` (the last may be shorter)."""
    for _ in range(epochs):
        order = torch.randperm(num_rows, generator=gen)
        for start in range(0, num_rows, batch_size):
            yield order[start:start + batch_size]


def train_step(optimizer: torch.optim.Optimizer, loss: torch.Tensor, scheduler=None) -> None:
    """One gradient step on ``loss`` (and one step of the learning-rate ``scheduler`` if given)."""
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    if scheduler is not None:
        scheduler.step()
