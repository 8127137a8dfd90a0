"""Text and JSON outputs of the application, written through :mod:`graphs.atomic` (temp file + rename).

JSON here is for people and other tools: tensors and arrays become lists, NaN/Inf become ``null``.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import torch

from graphs.atomic import atomic_write

__all__ = ["to_jsonable", "write_json", "write_text"]


def write_text(path: str | Path, text: str) -> Path:
    """Write ``text`` to ``path`` atomically (UTF-8)."""
    return atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


def to_jsonable(obj):
    """Convert tensors, arrays, numpy scalars and paths to plain JSON types (NaN/Inf → None)."""
    kind = type(obj)  # the plain leaves first, by exact type (numpy's float64 and str_ subclass float and str)
    if obj is None or kind is str or kind is int or kind is bool:
        return obj
    if kind is float:
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, torch.Tensor):
        t = obj.detach().cpu()
        finite = not (t.is_floating_point() or t.is_complex()) or bool(torch.isfinite(t).all())
        return t.tolist() if finite else to_jsonable(t.tolist())  # plain numbers already: no walk over them
    if isinstance(obj, np.ndarray):
        plain = obj.dtype.kind in "biu" or (obj.dtype.kind == "f" and bool(np.isfinite(obj).all()))
        return obj.tolist() if plain else to_jsonable(obj.tolist())
    if isinstance(obj, np.generic):
        return to_jsonable(obj.item())
    if isinstance(obj, float):  # a float subclass
        return obj if math.isfinite(obj) else None
    if isinstance(obj, Path):
        return str(obj)
    return obj


def write_json(path: str | Path, obj, *, indent: int | None = 2) -> Path:
    """Write ``obj`` as JSON atomically (tensors and arrays become lists, NaN becomes null)."""
    return write_text(path, json.dumps(to_jsonable(obj), indent=indent) + "\n")
