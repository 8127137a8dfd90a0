"""Read one tensor from a sample file: ``.npy``, ``.npz``, ``.safetensors``, ``.pt``/``.pth``.

One key convention for every multi-tensor file (``.npz``, ``.safetensors``, a ``.pt`` dict):
the tensor named by ``key``; else the file's only tensor; else the first of
:data:`PREFERRED_KEYS` present; else an error that lists the names and says to pass ``key``.
A ``.npy`` file, or a ``.pt`` file holding a bare tensor, holds one tensor named ``"samples"``.

:func:`load_tensor` returns the tensor as stored (model inputs keep their dtype);
:func:`load_samples` adds the checks for a raw ``[n_samples, n_units]`` sample matrix.
"""

from __future__ import annotations

import os
import pickle
import zipfile
from pathlib import Path

import numpy as np
import torch

import estimators.device  # noqa: F401  a loader makes the process's first tensors: huge pages first

__all__ = ["PREFERRED_KEYS", "TENSOR_SUFFIXES", "load_samples", "load_tensor"]

PREFERRED_KEYS = ("samples", "x", "X", "spins")
TENSOR_SUFFIXES = (".npy", ".npz", ".safetensors", ".pt", ".pth")
_SUFFIX_LIST = ".npy, .npz, .safetensors or .pt"


def load_tensor(path: str | os.PathLike, key: str | None = None, *, what: str = "samples") -> torch.Tensor:
    """The tensor stored in ``path`` (under ``key`` in a multi-tensor file), in its stored dtype.

    Parameters
    ----------
    path : a ``.npy``, ``.npz``, ``.safetensors``, ``.pt`` or ``.pth`` file.
    key : name of the tensor in a multi-tensor file; default: the only tensor, else the first of
        ``"samples"``, ``"x"``, ``"X"``, ``"spins"`` present.
    what : what the file holds, for error messages (``"samples"``, ``"data"``).

    Returns
    -------
    Tensor on the CPU, any shape, a numeric or bool dtype.

    Raises
    ------
    FileNotFoundError if ``path`` does not exist; ValueError for another suffix, an unreadable
    file, a missing or ambiguous key, or a non-numeric array.
    """
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"{what} file {str(p)!r} does not exist; pass an existing {_SUFFIX_LIST} file")
    if p.is_dir():
        raise ValueError(f"{what} file {str(p)!r} is a directory; pass a {_SUFFIX_LIST} file")
    suffix = p.suffix.lower()
    if suffix not in TENSOR_SUFFIXES:
        raise ValueError(f"{what} file {str(p)!r} has suffix {suffix!r}; use {_SUFFIX_LIST}")
    value = _choose(_read_entries(p, suffix), key, p)
    return _as_tensor(value, p, what)


def load_samples(path: str | os.PathLike, key: str | None = None) -> torch.Tensor:
    """A raw sample matrix: float32 Tensor of shape ``(n_samples, n_units)`` read with :func:`load_tensor`.

    Raises ValueError for a complex dtype or a tensor that is not 2-D; value checks (NaN, constant
    units) are left to ``estimators.validation.check_samples``.
    """
    x = load_tensor(path, key, what="samples")
    if x.is_complex():
        raise ValueError(f"samples in {str(path)!r} have dtype {x.dtype}; pass a real-valued numeric array")
    if x.ndim != 2:
        raise ValueError(
            f"samples in {str(path)!r} have shape {tuple(x.shape)}; expected a 2-D [n_samples, n_units] array "
            "(flatten each sample, e.g. x.reshape(len(x), -1))"
        )
    return x.to(torch.float32).contiguous()


def _read_entries(p: Path, suffix: str) -> dict:
    """Every array or tensor of the file, by name (a single-tensor file: ``{"samples": value}``)."""
    if suffix == ".npy":
        try:
            return {"samples": np.load(p, allow_pickle=False)}
        except (ValueError, EOFError, OSError) as err:
            detail = "the file is empty or truncated" if isinstance(err, EOFError) else str(err)
            raise ValueError(f"cannot read {str(p)!r} as a numeric .npy array ({detail}); save it with "
                             "numpy.save(path, array)") from None
    if suffix == ".npz":
        try:
            with np.load(p, allow_pickle=False) as z:
                return {k: z[k] for k in z.files}
        except (ValueError, OSError, zipfile.BadZipFile) as err:
            raise ValueError(f"cannot read {str(p)!r} as a numeric .npz archive ({err})") from None
    if suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(p))
        except (SafetensorError, OSError, ValueError) as err:
            raise ValueError(f"cannot read {str(p)!r} as safetensors ({err})") from None
    try:
        obj = torch.load(p, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError) as err:
        if isinstance(err, pickle.UnpicklingError) and "global" in str(err).lower():  # a pickled object, refused
            raise ValueError(f"{str(p)!r} holds Python objects other than tensors, which rsmi does not unpickle "
                             "(that could run arbitrary code); save plain tensors (torch.save({'samples': x}, ...)) "
                             "or use .npy / .safetensors") from None
        detail = "the file is empty or truncated" if isinstance(err, EOFError) else " ".join(str(err).split())[:200]
        raise ValueError(f"cannot read {str(p)!r} as a PyTorch file of tensors ({detail})") from None
    return obj if isinstance(obj, dict) else {"samples": obj}


def _choose(entries: dict, key: str | None, p: Path):
    """The entry named ``key``, else the only one, else the first of :data:`PREFERRED_KEYS` present."""
    names = ", ".join(sorted(map(str, entries)))
    if key is not None:
        if key not in entries:
            raise ValueError(f"{str(p)!r} has no tensor {key!r}; it holds {names}")
        return entries[key]
    if len(entries) == 1:
        return next(iter(entries.values()))
    if not entries:
        raise ValueError(f"{str(p)!r} holds no tensors; save the samples into it")
    for name in PREFERRED_KEYS:
        if name in entries:
            return entries[name]
    raise ValueError(
        f"{str(p)!r} holds several tensors ({names}) and none is named 'x', 'samples', 'X' or 'spins'; "
        "choose one with key=<name> (--key on the command line)"
    )


def _as_tensor(value, p: Path, what: str) -> torch.Tensor:
    """A CPU tensor from a tensor or an array-like; ValueError for strings and other non-numeric data."""
    if isinstance(value, torch.Tensor):
        return value
    arr = np.asarray(value)
    if arr.dtype == object or not (np.issubdtype(arr.dtype, np.number) or arr.dtype == bool):
        raise ValueError(f"{what} in {str(p)!r} have dtype {arr.dtype}; pass a numeric array")
    return torch.from_numpy(arr)
