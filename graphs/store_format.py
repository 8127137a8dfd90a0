"""The on-disk activation store format: a folder of shards plus a JSON manifest written last.

A store is a folder written by :func:`graphs.record_activations`::

    out/
      shard-00000.safetensors   "activations" [n, U] plus per-sample keys (below)
      shard-00001.safetensors   ...
      inputs.json               the input texts, once (text models), or
      inputs.safetensors        "inputs" [n_inputs, ...] (tensor inputs)
      unit_stats.safetensors    per-unit count, mean, m2, min, max (float64; graphs.moments.StreamingMoments)
      manifest.json             written last: a store without it is incomplete

A recording on several ranks writes shards ``shard-pRRR-NNNNN.safetensors`` per rank; the manifest lists
every shard in sample order.

Per-sample keys in every shard (int64, one entry per row): ``input_index`` (which
input the sample came from) and, for text, ``token_position``, ``token_id``,
``char_start``/``char_end`` (the token's span in its text; -1 when a reduction over
tokens was used or the tokenizer gives no offsets).

:class:`graphs.store_writer.StoreWriter` writes this format, :class:`graphs.store.ActivationStore`
reads it; both take the names and checks from here.
"""

from __future__ import annotations

import json
from pathlib import Path

__all__ = ["FORMAT_NAME", "FORMAT_VERSION", "INPUT_FILES", "MANIFEST_NAME", "STATS_FILE", "is_store_file",
           "read_manifest"]

MANIFEST_NAME = "manifest.json"
FORMAT_NAME = "rsmi-nn.activations"
FORMAT_VERSION = 1
INPUT_FILES = ("inputs.json", "inputs.safetensors")
STATS_FILE = "unit_stats.safetensors"
_REQUIRED = ("format", "version", "names", "modules", "num_samples", "num_units", "shards", "kind")


def is_store_file(name: str) -> bool:
    """Whether a file name is one a store writes: a shard, an inputs file, or a temporary file of one."""
    if name.startswith(".") and name.endswith(".tmp"):  # graphs.atomic's temporary file: .<name>.<random>.tmp
        name = name[1:].rsplit(".", 2)[0]
    own = name in (MANIFEST_NAME, STATS_FILE) or name in INPUT_FILES
    return own or (name.startswith("shard-") and name.endswith(".safetensors")) or ".tmp-" in name


def read_manifest(path) -> tuple[Path, dict]:
    """Find and check the manifest of a finished store; returns ``(folder, manifest)``.

    ``path`` is the store folder or its ``manifest.json``.

    Raises
    ------
    FileNotFoundError if the folder, its manifest or a shard it lists is missing
    (a store whose recording was interrupted has no manifest).
    ValueError if the manifest is not valid JSON, lacks required fields or does not add up.
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
    _check_manifest(manifest, p, mpath)
    return p, manifest


def _check_manifest(manifest, folder: Path, mpath: Path) -> None:
    """Raise if ``manifest`` is not a complete, consistent store manifest whose shards exist."""
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
        if not (folder / s["file"]).is_file():
            raise FileNotFoundError(f"shard {s['file']!r} listed in {str(mpath)!r} is missing; record the store again")
