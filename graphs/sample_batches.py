"""Row batches of an activation matrix, whatever holds it: a tensor, a NumPy array or an ``ActivationStore``.

:func:`graphs.build_graph` reads its samples through :class:`SampleBatches`, so one code path
serves an in-memory ``[N, U]`` array and a store streamed shard by shard from disk.
"""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["SampleBatches"]


class SampleBatches:
    """Uniform row-batch access to a tensor, a NumPy array or an ActivationStore (duck-typed)."""

    def __init__(self, x, names):
        if hasattr(x, "iter_batches") and hasattr(x, "num_units"):
            self.store, self.array = x, None
            self.num_samples, self.num_units = int(x.num_samples), int(x.num_units)
            default = list(getattr(x, "names", None) or [])
        else:
            if isinstance(x, torch.Tensor):
                arr = x.detach()
            else:
                arr = np.asarray(x)
                if arr.dtype == object or not (np.issubdtype(arr.dtype, np.number) or arr.dtype == bool):
                    raise ValueError(f"x must be a numeric [N, U] array, tensor or ActivationStore, got dtype={arr.dtype}")
            if arr.ndim != 2:
                raise ValueError(f"x must have 2 dimensions [n_samples, n_units], got shape {tuple(arr.shape)}")
            self.store, self.array = None, arr
            self.num_samples, self.num_units = int(arr.shape[0]), int(arr.shape[1])
            default = []
        if names is None:
            names = default or [f"unit:{i}" for i in range(self.num_units)]
        names = list(names)
        if len(names) != self.num_units:
            raise ValueError(f"names has {len(names)} entries but x has {self.num_units} units; pass one name per column")
        self.names = names

    def batches(self, batch_size: int):
        """Yield ``(start, batch)`` with ``batch`` a tensor of shape ``(b, U)``."""
        if self.store is not None:
            start = 0
            for batch in self.store.iter_batches(batch_size):
                yield start, batch
                start += batch.shape[0]
            return
        for start in range(0, self.num_samples, batch_size):
            chunk = self.array[start : start + batch_size]
            yield start, chunk if isinstance(chunk, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(chunk))
