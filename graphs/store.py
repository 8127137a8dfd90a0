"""Read an activation store: unit names, streamed batches, per-sample keys, inputs, examples.

The folder layout is described in :mod:`graphs.store_format`; stores are written by
:func:`graphs.record_activations` through :class:`graphs.store_writer.StoreWriter`. Reading
streams one shard at a time, so memory does not grow with the number of samples.
"""

from __future__ import annotations

import bisect
import json
from collections.abc import Iterator
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file

from graphs.store_format import FORMAT_NAME, MANIFEST_NAME, read_manifest

__all__ = ["FORMAT_NAME", "MANIFEST_NAME", "ActivationStore"]


class ActivationStore:
    """Read access to recorded activations: names, sizes, streamed batches, examples.

    Open with :meth:`ActivationStore.open`. Samples are rows (one per input, or one per
    token of a text input), units are columns named ``"<module>:<flat index>"``.

    Examples
    --------
    >>> store = ActivationStore.open("acts/")                      # doctest: +SKIP
    >>> for batch in store.iter_batches(batch_size=4096):          # doctest: +SKIP
    ...     stats.update(batch)                                    # [b, num_units]
    """

    def __init__(self, path: Path, manifest: dict):
        self.path = Path(path)
        self.manifest = manifest
        self.names: list[str] = list(manifest["names"])
        self._offsets = [s["offset"] for s in manifest["shards"]]
        self._inputs_cache = None
        self._name_index: dict[str, int] | None = None

    # ------------------------------------------------------------------ opening
    @classmethod
    def open(cls, path) -> ActivationStore:
        """Open a finished store folder.

        Raises
        ------
        FileNotFoundError if the folder, its manifest or a shard it lists is missing
        (a store whose recording was interrupted has no manifest).
        ValueError if the manifest is not valid JSON, lacks required fields or does not add up.
        """
        folder, manifest = read_manifest(path)
        return cls(folder, manifest)

    # --------------------------------------------------------------- properties
    @property
    def num_samples(self) -> int:
        return int(self.manifest["num_samples"])

    @property
    def num_units(self) -> int:
        return int(self.manifest["num_units"])

    @property
    def kind(self) -> str:
        """``"text"`` or ``"tensor"``."""
        return self.manifest["kind"]

    @property
    def modules(self) -> list[dict]:
        """Per module: ``name``, ``shape`` (per sample), ``dtype``, ``offset`` (first unit), ``num_units``."""
        return self.manifest["modules"]

    def __len__(self) -> int:
        return self.num_samples

    def __repr__(self) -> str:
        mods = ", ".join(m["name"] for m in self.modules[:4]) + (", ..." if len(self.modules) > 4 else "")
        return (
            f"ActivationStore({str(self.path)!r}, num_samples={self.num_samples}, "
            f"num_units={self.num_units}, modules=[{mods}])"
        )

    # ------------------------------------------------------------------ reading
    def _unit_index(self, units) -> torch.Tensor | None:
        if units is None:
            return None
        if isinstance(units, slice):
            return torch.arange(self.num_units)[units]
        if isinstance(units, str):
            units = [units]
        units = list(units) if not isinstance(units, torch.Tensor) else units
        if len(units) and isinstance(units[0], str):
            if self._name_index is None:
                self._name_index = {n: i for i, n in enumerate(self.names)}
            unknown = [u for u in units if u not in self._name_index]
            if unknown:
                raise ValueError(f"unknown unit name(s) {unknown[:5]}; names look like {self.names[0]!r}")
            units = [self._name_index[u] for u in units]
        idx = torch.as_tensor(units, dtype=torch.long)
        if idx.numel() and (int(idx.min()) < -self.num_units or int(idx.max()) >= self.num_units):
            raise ValueError(f"unit indices must lie in [0, {self.num_units}), got range [{int(idx.min())}, {int(idx.max())}]")
        return idx

    def _load_shard(self, i: int) -> dict[str, torch.Tensor]:
        s = self.manifest["shards"][i]
        f = self.path / s["file"]
        if not f.is_file():
            raise FileNotFoundError(f"shard {str(f)!r} is missing; record the store again")
        try:
            data = load_file(str(f))
        except (SafetensorError, OSError) as err:
            raise ValueError(f"shard {str(f)!r} is damaged ({err}); record the store again") from None
        acts = data.get("activations")
        if acts is None or tuple(acts.shape) != (s["num_samples"], self.num_units):
            got = None if acts is None else tuple(acts.shape)
            raise ValueError(
                f"shard {str(f)!r} holds activations of shape {got}, expected {(s['num_samples'], self.num_units)}; "
                "record the store again"
            )
        return data

    def iter_batches(
        self,
        batch_size: int | None = None,
        *,
        units=None,
        dtype: torch.dtype = torch.float32,
        device="cpu",
    ) -> Iterator[torch.Tensor]:
        """Stream the samples in order as tensors of shape ``(b, n_units)``.

        Parameters
        ----------
        batch_size : rows per batch (the last may be shorter); ``None`` yields one shard at a time.
        units : optional unit indices or names to keep (columns, in the given order).
        dtype, device : of the yielded tensors.

        Only one shard (plus one batch) is held in memory at a time.
        """
        if batch_size is not None and (isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1):
            raise ValueError(f"batch_size must be a positive integer or None, got {batch_size!r}")
        idx = self._unit_index(units)
        carry: torch.Tensor | None = None
        for i in range(len(self.manifest["shards"])):
            acts = self._load_shard(i)["activations"]
            if idx is not None:
                acts = acts[:, idx]
            acts = acts.to(dtype)
            if batch_size is None:
                yield acts.to(device)
                continue
            if carry is not None:
                acts = torch.cat([carry, acts])
                carry = None
            full = (acts.shape[0] // batch_size) * batch_size
            for start in range(0, full, batch_size):
                yield acts[start : start + batch_size].to(device)
            if full < acts.shape[0]:
                carry = acts[full:].clone()
        if carry is not None:
            yield carry.to(device)

    def to_tensor(self, units=None, *, rows=None, dtype: torch.dtype = torch.float32, device="cpu") -> torch.Tensor:
        """The samples as one tensor of shape ``(n_samples, n_units)`` (or ``len(units)`` columns); ``rows``
        (sample indices, any order, repeats allowed) keeps only those rows, in that order, reading one shard
        at a time (memory: the result plus one shard)."""
        idx = self._unit_index(units)
        width = self.num_units if idx is None else idx.numel()
        if rows is not None:
            rows = torch.as_tensor(rows, dtype=torch.long).flatten()
            if rows.numel() and (int(rows.min()) < 0 or int(rows.max()) >= self.num_samples):
                raise ValueError(f"rows must lie in [0, {self.num_samples}), got range "
                                 f"[{int(rows.min())}, {int(rows.max())}]")
        out = torch.empty(self.num_samples if rows is None else rows.numel(), width, dtype=dtype, device=device)
        start = 0
        for batch in self.iter_batches(None, units=idx, dtype=dtype, device=device):
            stop = start + batch.shape[0]
            if rows is None:
                out[start:stop] = batch
            else:
                here = ((rows >= start) & (rows < stop)).nonzero().flatten()
                out[here.to(out.device)] = batch[(rows[here] - start).to(batch.device)]
            start = stop
        return out

    def unit_stats(self):
        """Per-unit count, mean, variance, min and max over all samples (a :class:`graphs.moments.StreamingMoments`,
        float64, computed while recording; merged in a fixed order, so the same bits on any number of ranks)."""
        from graphs.moments import StreamingMoments

        return StreamingMoments.from_state(load_file(str(self._listed_file("unit_stats", "per-unit statistics"))))

    def _listed_file(self, key: str, what: str) -> Path:
        """The file the manifest names under ``key``; a clear error when it is not listed or is missing."""
        name = self.manifest.get(key)
        if name is None:
            raise ValueError(f"store {str(self.path)!r} was recorded without its {what}")
        f = self.path / name
        if not f.is_file():
            raise FileNotFoundError(f"{what} file {str(f)!r} is missing; record the store again")
        return f

    def sample_info(self, indices) -> dict[str, torch.Tensor]:
        """Per-sample keys (``input_index``, and for text ``token_position``, ``token_id``, ...) for ``indices``."""
        idx = torch.as_tensor(indices, dtype=torch.long).flatten()
        n = self.num_samples
        if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= n):
            raise ValueError(f"sample indices must lie in [0, {n}), got range [{int(idx.min())}, {int(idx.max())}]")
        keys = self.manifest.get("sample_keys", ["input_index"])
        out = {k: torch.empty(idx.numel(), dtype=torch.long) for k in keys}
        by_shard: dict[int, list[int]] = {}
        for pos, i in enumerate(idx.tolist()):
            by_shard.setdefault(bisect.bisect_right(self._offsets, i) - 1, []).append(pos)
        for s, positions in by_shard.items():
            shard = self.manifest["shards"][s]
            rows = idx[positions] - shard["offset"]
            try:
                with safe_open(str(self.path / shard["file"]), framework="pt") as fh:
                    for k in keys:
                        out[k][positions] = fh.get_tensor(k)[rows]
            except (SafetensorError, OSError) as err:
                raise ValueError(f"shard {str(self.path / shard['file'])!r} is damaged ({err}); "
                                 "record the store again") from None
        return out

    def inputs(self):
        """The recorded inputs: a list of texts, or a tensor ``(n_inputs, ...)``."""
        if self._inputs_cache is None:
            f = self._listed_file("inputs_file", "inputs")
            if f.name.endswith(".json"):
                self._inputs_cache = json.loads(f.read_text(encoding="utf-8"))
            else:
                self._inputs_cache = load_file(str(f))["inputs"]
        return self._inputs_cache

    def examples(self, indices, *, context: int | None = 60) -> list[dict]:
        """Describe samples so a report can show the inputs that activate a unit most.

        One dict per index with ``sample`` and ``input_index``, and the text with the token
        marked ``[[...]]`` (``"… the [[cat]] sat"``; ``context`` characters a side, ``None``: all),
        or the input tensor; see :func:`graphs.store_examples.describe_samples`.
        """
        from graphs.store_examples import describe_samples

        return describe_samples(self, indices, context=context)
