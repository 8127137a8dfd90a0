"""On-disk activation stores: shards of recorded samples plus a JSON manifest.

A store is a folder written by :func:`graphs.record_activations`::

    out/
      shard-00000.safetensors   "activations" [n, U] plus per-sample keys (below)
      shard-00001.safetensors   ...
      inputs.json               the input texts, once (text models), or
      inputs.safetensors        "inputs" [n_inputs, ...] (tensor inputs)
      manifest.json             written last: a store without it is incomplete

Per-sample keys in every shard (int64, one entry per row): ``input_index`` (which
input the sample came from) and, for text, ``token_position``, ``token_id``,
``char_start``/``char_end`` (the token's span in its text; -1 when a reduction over
tokens was used or the tokenizer gives no offsets). Reading streams one shard at a
time, so memory does not grow with the number of samples.
"""

from __future__ import annotations

import bisect
import json
import logging
from collections.abc import Iterator, Sequence
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from graphs.atomic import atomic_write, atomic_write_bytes

__all__ = ["FORMAT_NAME", "MANIFEST_NAME", "ActivationStore", "StoreWriter"]

logger = logging.getLogger(__name__)

MANIFEST_NAME = "manifest.json"
FORMAT_NAME = "rsmi-nn.activations"
FORMAT_VERSION = 1
_REQUIRED = ("format", "version", "names", "modules", "num_samples", "num_units", "shards", "kind")
_OWN_FILES = ("inputs.json", "inputs.safetensors")
_DEFAULT_SHARD_BYTES = 64 * 2**20


def _atomic_json(obj, path: Path) -> None:
    atomic_write_bytes(path, json.dumps(obj, indent=1).encode("utf-8"))


def _atomic_safetensors(tensors: dict[str, torch.Tensor], path: Path) -> None:
    atomic_write(path, lambda tmp: save_file({k: v.contiguous() for k, v in tensors.items()}, tmp))


class StoreWriter:
    """Stream samples into a store folder, one shard of ``shard_size`` rows at a time.

    Only the rows not yet written (less than one shard plus one batch) are kept in memory.
    Call :meth:`add` per batch, the ``write_inputs_*`` method once, then :meth:`close`,
    which flushes the last shard and writes the manifest last.
    """

    def __init__(self, path, *, shard_size: int | None = None, overwrite: bool = False):
        self.path = Path(path)
        self.shard_size = shard_size
        self._prepare(overwrite)
        self._pending: list[dict[str, torch.Tensor]] = []
        self._pending_rows = 0
        self._shards: list[dict] = []
        self._written = 0
        self._num_units: int | None = None

    def _prepare(self, overwrite: bool) -> None:
        p = self.path
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
                if f.is_file() and (
                    f.name in _OWN_FILES
                    or (f.name.startswith("shard-") and f.name.endswith(".safetensors"))
                    or ".tmp-" in f.name
                ):
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
        name = f"shard-{len(self._shards):05d}.safetensors"
        _atomic_safetensors(shard, self.path / name)
        self._shards.append({"file": name, "offset": self._written, "num_samples": rows})
        self._written += rows
        self._pending_rows -= rows

    def write_inputs_text(self, texts: Sequence[str]) -> str:
        _atomic_json(list(texts), self.path / "inputs.json")
        return "inputs.json"

    def write_inputs_tensor(self, inputs: torch.Tensor) -> str:
        _atomic_safetensors({"inputs": inputs.detach().cpu()}, self.path / "inputs.safetensors")
        return "inputs.safetensors"

    def close(self, manifest: dict) -> dict:
        """Flush the remaining rows and write the manifest (last); returns the manifest."""
        if self._pending_rows:
            self._flush(self._pending_rows)
        full = {"format": FORMAT_NAME, "version": FORMAT_VERSION, **manifest}
        full["num_samples"] = self._written
        full["shards"] = self._shards
        full["shard_size"] = self.shard_size
        _atomic_json(full, self.path / MANIFEST_NAME)
        return full


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
        ValueError if the manifest is not valid JSON or lacks required fields.
        """
        p = Path(path)
        if p.is_file() and p.name == MANIFEST_NAME:
            p = p.parent
        if not p.is_dir():
            raise FileNotFoundError(f"activation store {str(p)!r} does not exist; record one with record_activations")
        mpath = p / MANIFEST_NAME
        if not mpath.is_file():
            raise FileNotFoundError(
                f"{str(mpath)!r} not found: {str(p)!r} is not a finished activation store "
                "(recording interrupted?); record it again with overwrite=True"
            )
        try:
            manifest = json.loads(mpath.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise ValueError(f"{str(mpath)!r} is not valid JSON ({err}); record the store again") from err
        if not isinstance(manifest, dict) or manifest.get("format") != FORMAT_NAME:
            raise ValueError(f"{str(mpath)!r} is not an rsmi-nn activation manifest (format != {FORMAT_NAME!r})")
        missing = [k for k in _REQUIRED if k not in manifest]
        if missing:
            raise ValueError(f"{str(mpath)!r} lacks required field(s) {missing}; record the store again")
        if len(manifest["names"]) != manifest["num_units"]:
            raise ValueError(
                f"{str(mpath)!r} lists {len(manifest['names'])} unit names but num_units={manifest['num_units']}; "
                "record the store again"
            )
        if sum(s["num_samples"] for s in manifest["shards"]) != manifest["num_samples"]:
            raise ValueError(f"{str(mpath)!r}: shard sizes do not add up to num_samples; record the store again")
        for s in manifest["shards"]:
            if not (p / s["file"]).is_file():
                raise FileNotFoundError(f"shard {s['file']!r} listed in {str(mpath)!r} is missing; record the store again")
        return cls(p, manifest)

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
        data = load_file(str(f))
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

    def to_tensor(self, units=None, *, dtype: torch.dtype = torch.float32, device="cpu") -> torch.Tensor:
        """All samples as one tensor of shape ``(n_samples, n_units)`` (or ``len(units)`` columns)."""
        idx = self._unit_index(units)
        width = self.num_units if idx is None else idx.numel()
        out = torch.empty(self.num_samples, width, dtype=dtype, device=device)
        row = 0
        for batch in self.iter_batches(None, units=idx, dtype=dtype, device=device):
            out[row : row + batch.shape[0]] = batch
            row += batch.shape[0]
        return out

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
            with safe_open(str(self.path / shard["file"]), framework="pt") as fh:
                for k in keys:
                    out[k][positions] = fh.get_tensor(k)[rows]
        return out

    def inputs(self):
        """The recorded inputs: a list of texts, or a tensor ``(n_inputs, ...)``."""
        if self._inputs_cache is None:
            name = self.manifest.get("inputs_file")
            if name is None:
                raise ValueError(f"store {str(self.path)!r} was recorded without its inputs")
            f = self.path / name
            if not f.is_file():
                raise FileNotFoundError(f"inputs file {str(f)!r} is missing; record the store again")
            if name.endswith(".json"):
                self._inputs_cache = json.loads(f.read_text(encoding="utf-8"))
            else:
                self._inputs_cache = load_file(str(f))["inputs"]
        return self._inputs_cache

    def examples(self, indices, *, context: int | None = 60) -> list[dict]:
        """Describe samples so a report can show the inputs that activate a unit most.

        Parameters
        ----------
        indices : sample indices (rows).
        context : for text, characters kept on each side of the marked token (``None``: whole text).

        Returns
        -------
        One dict per index with ``sample`` and ``input_index``, and
        - text, per token: ``text`` with the token marked ``[[...]]`` (``"… the [[cat]] sat"``),
          ``token``, ``token_position``, ``token_id``;
        - text, mean over tokens: ``text``;
        - tensor inputs: ``input`` (the input, reshaped to ``manifest["input_shape"]`` when given).
        """
        info = self.sample_info(indices)
        inputs = self.inputs()
        specials = {int(k): v for k, v in self.manifest.get("special_tokens", {}).items()}
        shape = self.manifest.get("input_shape")
        out = []
        for pos, i in enumerate(torch.as_tensor(indices, dtype=torch.long).flatten().tolist()):
            j = int(info["input_index"][pos])
            ex = {"sample": i, "input_index": j}
            if self.kind == "text":
                text = inputs[j]
                tpos = int(info.get("token_position", torch.full((pos + 1,), -1))[pos])
                if tpos < 0:
                    ex["text"] = text
                else:
                    tid = int(info["token_id"][pos])
                    cs, ce = int(info["char_start"][pos]), int(info["char_end"][pos])
                    ex.update(token_position=tpos, token_id=tid)
                    ex["token"], ex["text"] = _mark(text, cs, ce, tpos, specials.get(tid, f"<{tid}>"), context)
            else:
                x = inputs[j]
                ex["input"] = x.reshape(shape) if shape else x
            out.append(ex)
        return out


def _mark(text: str, start: int, end: int, position: int, special: str, context: int | None) -> tuple[str, str]:
    """Return (token string, text with the token wrapped in ``[[...]]`` and trimmed to ``context``)."""
    if start < 0 or end <= start:  # special token (no span in the text) or no offsets
        token = special
        start = end = 0 if position == 0 else len(text)
    else:
        token = text[start:end]
    left, right = text[:start], text[end:]
    if context is not None:
        if len(left) > context:
            left = "…" + left[len(left) - context :]
        if len(right) > context:
            right = right[:context] + "…"
    sep_l = " " if start == 0 and end == 0 and position == 0 else ""
    sep_r = " " if start == end and position != 0 else ""
    return token, f"{left}{sep_r}[[{token}]]{sep_l}{right}"
