"""Small file helpers for run directories: atomic writes and reading raw sample files.

Every output is written to a temporary file in the same folder and renamed into place
(``os.replace``), so an interrupted run never leaves a half-written file under a final name.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import torch

from graphs.atomic import atomic_write
from graphs.atomic import atomic_write_bytes as write_bytes

__all__ = [
    "atomic_write",
    "load_samples",
    "save_tensors",
    "to_jsonable",
    "write_bytes",
    "write_json",
    "write_text",
]


def write_text(path: str | Path, text: str) -> Path:
    """Write ``text`` to ``path`` atomically (UTF-8)."""
    return atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


def to_jsonable(obj):
    """Convert tensors, arrays, numpy scalars and paths to plain JSON types (NaN/Inf → None)."""
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, torch.Tensor):
        return to_jsonable(obj.detach().cpu().tolist())
    if isinstance(obj, np.ndarray):
        return to_jsonable(obj.tolist())
    if isinstance(obj, np.generic):
        return to_jsonable(obj.item())
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, Path):
        return str(obj)
    return obj


def write_json(path: str | Path, obj, *, indent: int | None = 2) -> Path:
    """Write ``obj`` as JSON atomically (tensors and arrays become lists, NaN becomes null)."""
    return write_text(path, json.dumps(to_jsonable(obj), indent=indent) + "\n")


def save_tensors(path: str | Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> Path:
    """Save ``tensors`` with safetensors, atomically (contiguous CPU copies)."""
    from safetensors.torch import save_file

    clean = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    return atomic_write(path, lambda tmp: save_file(clean, tmp, metadata=metadata))


def load_samples(path: str | Path, *, key: str | None = None) -> torch.Tensor:
    """Read a raw ``[N, U]`` sample matrix from ``.npy``, ``.npz``, ``.safetensors`` or ``.pt``.

    ``key`` picks the tensor in a multi-tensor file (default: the only one, or ``samples``/``x``).
    Returns a float32 tensor; shape and value checks are left to the caller.
    """
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"samples file {str(p)!r} does not exist; pass an existing .npy or .safetensors file")
    if p.is_dir():
        raise ValueError(f"samples file {str(p)!r} is a directory; pass a .npy or .safetensors file")
    suffix = p.suffix.lower()
    if suffix == ".npy":
        try:
            arr = np.load(p, allow_pickle=False)
        except ValueError as err:
            raise ValueError(f"cannot read {str(p)!r} as a numeric .npy array ({err})") from None
        tensors = {"samples": arr}
    elif suffix == ".npz":
        with np.load(p, allow_pickle=False) as z:
            tensors = {k: z[k] for k in z.files}
    elif suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.numpy import load_file

        try:
            tensors = load_file(str(p))
        except (SafetensorError, OSError, ValueError) as err:
            raise ValueError(f"cannot read {str(p)!r} as safetensors ({err})") from None
    elif suffix in (".pt", ".pth"):
        obj = torch.load(p, map_location="cpu", weights_only=True)
        tensors = obj if isinstance(obj, dict) else {"samples": obj}
    else:
        raise ValueError(f"samples file {str(p)!r} has suffix {suffix!r}; use .npy, .npz, .safetensors or .pt")
    if key is not None:
        if key not in tensors:
            raise ValueError(f"{str(p)!r} has no tensor {key!r}; it holds {', '.join(sorted(tensors))}")
        value = tensors[key]
    elif len(tensors) == 1:
        value = next(iter(tensors.values()))
    else:
        for name in ("samples", "x", "X", "spins"):
            if name in tensors:
                value = tensors[name]
                break
        else:
            raise ValueError(
                f"{str(p)!r} holds several tensors ({', '.join(sorted(tensors))}); choose one with --key"
            )
    arr = value.numpy() if isinstance(value, torch.Tensor) else np.asarray(value)
    if arr.dtype == object or not (np.issubdtype(arr.dtype, np.number) or arr.dtype == bool):
        raise ValueError(f"samples in {str(p)!r} have dtype {arr.dtype}; pass a numeric array")
    if arr.ndim != 2:
        raise ValueError(
            f"samples in {str(p)!r} have shape {tuple(arr.shape)}; expected a 2-D [n_samples, n_units] array "
            "(flatten each sample, e.g. x.reshape(len(x), -1))"
        )
    return torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32))
