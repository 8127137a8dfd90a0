"""``rsmi encode``: a finished flow applied to activations, streamed from a store or a samples file.

:func:`encode_to_file` reads the level-0 units of the run (``run.unit_names``, by name from an
activation store, or the columns of a raw ``[N, U_0]`` samples file) batch by batch, passes each
batch through :meth:`rsmi_nn.run.Run.encode` and writes one safetensors file with one tensor per
level, ``level_000``, ``level_001``, ... of shape ``[N, J_l * h_l]`` (float32). Memory holds the
outputs and one batch of activations, never the whole ``[N, U_0]`` recording.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

__all__ = ["encode_to_file"]


def _batches(run, store=None, samples=None, key=None, batch_size: int = 4096):
    """Level-0 activations of the run's units in row batches ``[b, U_0]``; returns ``(n_rows, iterator)``."""
    if samples is not None:
        from graphs.tensor_files import load_samples

        x = load_samples(samples, key=key)
        if x.shape[1] != run.num_units:
            raise ValueError(f"samples in {str(samples)!r} have {x.shape[1]} columns but the run's level 0 has "
                             f"{run.num_units} units; pass one column per unit, in the run's order (run.unit_names)")
        return x.shape[0], (x[i : i + batch_size] for i in range(0, x.shape[0], batch_size))
    from graphs import ActivationStore

    st = ActivationStore.open(store)
    missing = sorted(set(run.unit_names) - set(st.names))
    if missing:
        raise ValueError(f"store {str(store)!r} lacks {len(missing)} of the run's level-0 units (e.g. {missing[:3]}); "
                         "record the same modules as the run did")
    return st.num_samples, st.iter_batches(batch_size, units=run.unit_names)


def encode_to_file(run_dir, out, *, store=None, samples=None, key=None, batch_size: int = 4096) -> Path:
    """Encode activations with the flow in ``run_dir``; writes ``out`` (safetensors), returns its path.

    Parameters
    ----------
    run_dir : a finished run directory (``flow.json`` + ``levels/``).
    store : an activation store holding the run's level-0 units (default ``run_dir/activations``);
        or ``samples``: a raw ``[N, U_0]`` samples file (``key`` picks its tensor).
    batch_size : rows encoded at a time.

    Returns
    -------
    Path of the file: tensors ``level_000`` ... ``[N, J_l * h_l]`` float32, and metadata ``run``,
    ``num_samples`` and ``num_levels``.
    """
    from graphs.atomic import atomic_save_tensors
    from rsmi_nn.run import load_run

    run = load_run(run_dir)
    if store is None and samples is None:
        store = Path(run_dir) / "activations"
        if not (store / "manifest.json").is_file():
            raise FileNotFoundError(f"{str(run_dir)!r} has no activations/ store; pass --store DIR or --samples FILE")
    n, batches = _batches(run, store, samples, key, batch_size)
    outs = [torch.empty(n, lv.num_coarse, dtype=torch.float32) for lv in run.levels]
    row = 0
    for x in batches:
        for buf, h in zip(outs, run.encode(x)):
            buf[row : row + x.shape[0]] = h
        row += x.shape[0]
    tensors = {f"level_{i:03d}": t for i, t in enumerate(outs)}
    meta = {"run": str(Path(run_dir).resolve()), "num_samples": str(n), "num_levels": str(len(outs)),
            "shapes": json.dumps({k: list(v.shape) for k, v in tensors.items()})}
    return atomic_save_tensors(out, tensors, metadata=meta)
