"""Write an activation store: stream rows into fixed-size shards, then the manifest last.

The folder layout and manifest fields are described in :mod:`graphs.store_format`.
Only the rows not yet written (less than one shard plus one batch) are kept in memory,
so recording memory does not grow with the number of samples.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from graphs.atomic import atomic_save_tensors, atomic_write_json
from graphs.store_format import FORMAT_NAME, FORMAT_VERSION, MANIFEST_NAME, STATS_FILE, is_store_file

__all__ = ["StoreWriter"]

_DEFAULT_SHARD_BYTES = 64 * 2**20


class StoreWriter:
    """Stream samples into a store folder, one shard of ``shard_size`` rows at a time.

    Only the rows not yet written (less than one shard plus one batch) are kept in memory.
    Call :meth:`add` per batch, the ``write_inputs_*`` method once, then :meth:`close`,
    which flushes the last shard and writes the manifest last.

    Several writers (ranks) fill one store: each a ``part`` of the samples (shards ``shard-pPPP-NNNNN``), into a
    folder made once by :meth:`prepare`; each calls :meth:`finish`, and one writes the manifest over every part's
    shards in sample order (:meth:`write_manifest`).
    """

    def __init__(self, path, *, shard_size: int | None = None, overwrite: bool = False, part: int | None = None):
        self.path = Path(path)
        self.shard_size = shard_size
        self.part = part
        if part is None:
            self.prepare(self.path, overwrite)
        elif not self.path.is_dir():
            raise FileNotFoundError(f"store folder {str(self.path)!r} is missing; prepare it before writing part {part}")
        self._pending: list[dict[str, torch.Tensor]] = []
        self._pending_rows = 0
        self._shards: list[dict] = []
        self._written = 0
        self._num_units: int | None = None

    @staticmethod
    def prepare(path, overwrite: bool) -> None:
        """Create the folder; with ``overwrite``, remove an earlier store's files (and only those)."""
        p = Path(path)
        if p.exists() and not p.is_dir():
            raise ValueError(f"out={str(p)!r} is a file, not a folder; pass a folder path for the store")
        if p.is_dir() and any(p.iterdir()):
            if not overwrite:
                raise ValueError(
                    f"out={str(p)!r} is not empty; choose an empty or new folder, or pass overwrite=True"
                )
            # Invalidate first (a store without manifest is incomplete), then remove only our own files.
            (p / MANIFEST_NAME).unlink(missing_ok=True)
            for f in p.iterdir():
                if f.is_file() and is_store_file(f.name):
                    f.unlink()
        p.mkdir(parents=True, exist_ok=True)

    def add(self, activations: torch.Tensor, **per_sample: torch.Tensor) -> None:
        """Append rows: ``activations`` [b, U] and per-sample int64 tensors [b]."""
        b, u = activations.shape
        if self._num_units is None:
            self._num_units = u
            if self.shard_size is None:
                self.shard_size = max(1, _DEFAULT_SHARD_BYTES // (u * activations.element_size()))
        elif u != self._num_units:
            raise ValueError(f"batch has {u} units but earlier batches had {self._num_units}; outputs changed shape")
        if b == 0:
            return
        row = {"activations": activations.cpu()}
        row.update({k: v.to("cpu", torch.int64) for k, v in per_sample.items()})
        self._pending.append(row)
        self._pending_rows += b
        while self._pending_rows >= self.shard_size:
            self._flush(self.shard_size)

    def _flush(self, rows: int) -> None:
        """Write the first ``rows`` pending rows as one shard, copying only those rows."""
        take, need = [], rows
        while need:
            chunk = self._pending[0]
            n = chunk["activations"].shape[0]
            if n <= need:
                take.append(self._pending.pop(0))
                need -= n
            else:
                take.append({k: v[:need] for k, v in chunk.items()})
                self._pending[0] = {k: v[need:] for k, v in chunk.items()}
                need = 0
        shard = {k: take[0][k] if len(take) == 1 else torch.cat([t[k] for t in take]) for k in take[0]}
        part = "" if self.part is None else f"p{self.part:03d}-"
        name = f"shard-{part}{len(self._shards):05d}.safetensors"
        atomic_save_tensors(self.path / name, shard)
        self._shards.append({"file": name, "offset": self._written, "num_samples": rows})
        self._written += rows
        self._pending_rows -= rows

    def write_inputs_text(self, texts: Sequence[str]) -> str:
        """Write the input texts once (``inputs.json``); returns the file name for the manifest."""
        atomic_write_json(self.path / "inputs.json", list(texts))
        return "inputs.json"

    def write_inputs_tensor(self, inputs: torch.Tensor) -> str:
        """Write the input tensor ``(n_inputs, ...)`` once (``inputs.safetensors``); returns the file name."""
        atomic_save_tensors(self.path / "inputs.safetensors", {"inputs": inputs})
        return "inputs.safetensors"

    def write_unit_stats(self, moments) -> str:
        """Write the per-unit statistics (a :class:`graphs.moments.StreamingMoments`) once; returns the file name."""
        atomic_save_tensors(self.path / STATS_FILE, moments.state())
        return STATS_FILE

    @property
    def num_written(self) -> int:
        """Rows written to shards so far."""
        return self._written

    def finish(self) -> list[dict]:
        """Flush the remaining rows; returns this writer's shards (``file``, ``num_samples``) in order."""
        if self._pending_rows:
            self._flush(self._pending_rows)
        return [{"file": s["file"], "num_samples": s["num_samples"]} for s in self._shards]

    def write_manifest(self, manifest: dict, shards: list[dict]) -> dict:
        """Write the manifest (last) over ``shards`` in sample order (from one or several parts); returns it."""
        offsets = [0]
        for s in shards:
            offsets.append(offsets[-1] + s["num_samples"])
        full = {"format": FORMAT_NAME, "version": FORMAT_VERSION, **manifest}
        full["num_samples"] = offsets[-1]
        full["shards"] = [{"file": s["file"], "offset": o, "num_samples": s["num_samples"]}
                          for s, o in zip(shards, offsets)]
        full["shard_size"] = self.shard_size
        atomic_write_json(self.path / MANIFEST_NAME, full)
        return full

    def close(self, manifest: dict) -> dict:
        """Flush the remaining rows and write the manifest (last); returns the manifest."""
        return self.write_manifest(manifest, self.finish())
