"""Atomic file writes: a temporary file in the target's folder, then ``os.replace``.

An interrupted run never leaves a half-written file under a final name. This module is the
only place that writes files atomically: every writer in ``graphs``, ``rsmi_nn`` and
``experiments`` calls :func:`atomic_write` or one of its helpers for bytes
(:func:`atomic_write_bytes`), JSON (:func:`atomic_write_json`) and safetensors
(:func:`atomic_save_tensors`).
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

__all__ = ["atomic_save_tensors", "atomic_write", "atomic_write_bytes", "atomic_write_json"]


def _read_umask() -> int:
    mask = os.umask(0)  # reading the umask means setting it: restore it at once (once, at import)
    os.umask(mask)
    return mask


_UMASK = _read_umask()


def atomic_write(path: str | os.PathLike, write: Callable[[str], None]) -> Path:
    """Call ``write(tmp_path)``, flush it to disk, then rename ``tmp_path`` to ``path``.

    ``tmp_path`` lies in ``path``'s folder (so the rename is atomic) and ends in ``.tmp``;
    writers that infer a format from the suffix must be told the format explicitly. The file gets
    the permissions a plain ``open(path, "w")`` would give it (``mkstemp`` makes it owner-only).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o666 & ~_UMASK)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically."""
    return atomic_write(path, lambda tmp: Path(tmp).write_bytes(data))


def atomic_write_json(path: str | os.PathLike, obj, *, indent: int | None = 1, sort_keys: bool = False) -> Path:
    """Write ``obj`` as UTF-8 JSON to ``path`` atomically.

    NaN/Inf are written as JSON's ``NaN``/``Infinity`` (``allow_nan=True``); convert them first
    where a strict JSON reader must read the file.
    """
    text = json.dumps(obj, indent=indent, sort_keys=sort_keys, allow_nan=True)
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_save_tensors(
    path: str | os.PathLike, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None
) -> Path:
    """Save ``tensors`` (name -> Tensor) as safetensors atomically, as contiguous detached CPU copies.

    The file is streamed to the temporary path, so no second in-memory copy of the bytes is made.
    """
    from safetensors.torch import save_file

    clean = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}

    def write(tmp: str) -> None:
        save_file(clean, tmp, metadata=metadata)
        _sort_safetensors_header(tmp)

    return atomic_write(path, write)


def _sort_safetensors_header(path: str) -> None:
    """Rewrite a safetensors header with sorted keys, in place: the same tensors give the same bytes.

    The library writes ``__metadata__`` from a hash map, whose order changes between processes. The
    sorted header (the same JSON, reordered) has the same length, so only the header bytes change; a
    header that came out longer (never seen) is left as written.
    """
    with open(path, "rb+") as fh:
        n = int.from_bytes(fh.read(8), "little")
        raw = fh.read(n)
        header = json.loads(raw)
        text = json.dumps(header, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
        if len(text) > n:
            return
        fh.seek(8)
        fh.write(text + b" " * (n - len(text)))  # the format allows a header padded with spaces
