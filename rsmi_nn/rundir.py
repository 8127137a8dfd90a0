"""The run directory's format: every path and file of a flow's output, written and read here only.

::

    flow.json              one record per finished level (rewritten atomically after each level)
    flow_config.json       what the flow was run with (options, seed, data fingerprint): a resume must match
    levels/NNN/            one folder per finished level
        graph.safetensors, graph.json   the level's input graph
        regions.safetensors             blocks, visible / environment indices and masks
        filters.safetensors             filters [J, max_visible, h], mean / std [U], mi / mi_stderr [J];
                                        an MLP filter's weights under "model.*"
        coarse.safetensors              the coarse samples [N, J*h] (the next level's samples)
        timing.json                     seconds (not reproducible, so kept out of level.json)
        level.json                      the level's record, written last: a level is complete iff it exists

Every file is written atomically (:mod:`graphs.atomic`). :mod:`rsmi_nn.run` builds the ``Run`` and
``Level`` objects on these readers.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from pathlib import Path

import torch

import estimators.device  # noqa: F401  a loader makes the process's first tensors: huge pages first
from graphs.atomic import atomic_save_tensors, atomic_write_json

log = logging.getLogger(__name__)

__all__ = [
    "FLOW_CONFIG",
    "FLOW_JSON",
    "LEVEL_JSON",
    "MODEL_PREFIX",
    "check_safetensors",
    "discard_levels",
    "finished_levels",
    "fingerprint",
    "graph_fingerprint",
    "level_dir",
    "load_tensors",
    "prepare",
    "read_flow",
    "read_json",
    "read_level",
    "same_blocks",
    "write_flow",
    "write_level",
]

FLOW_JSON = "flow.json"
FLOW_CONFIG = "flow_config.json"
LEVEL_JSON = "level.json"
LEVELS = "levels"
MODEL_PREFIX = "model."


def level_dir(out: str | Path, level: int) -> Path:
    """``out/levels/NNN``."""
    return Path(out) / LEVELS / f"{level:03d}"


def fingerprint(x: torch.Tensor) -> str:
    """A short hash of the samples' bytes (a resume must see the same data)."""
    return hashlib.sha256(_buffer(x)).hexdigest()[:16]


def _buffer(t: torch.Tensor) -> memoryview:
    """``t``'s bytes without a copy of them (``tobytes`` copied the default run's 295 MB of samples: its
    fingerprint 0.90 -> 0.13 s on this 2-core VM, the same digest)."""
    return t.detach().cpu().contiguous().numpy().data


def graph_fingerprint(graph) -> str:
    """A short hash of a graph's content: node names, edges and weights (not its metadata)."""
    h = hashlib.sha256("\n".join(graph.names).encode("utf-8"))
    for t in (graph.edge_index, graph.edge_weight):
        if t is not None:
            h.update(_buffer(t))
    return h.hexdigest()[:16]


def read_json(path: Path, what: str):
    """JSON from ``path``; a missing or damaged file is an error naming ``what`` and the fix."""
    if not path.is_file():
        raise FileNotFoundError(f"{what} {str(path)!r} does not exist; is this a finished rsmi run directory?")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{what} {str(path)!r} is not valid JSON ({err}); re-run the flow into a new directory") from None


def load_tensors(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a safetensors file of the run; missing or damaged files are clear errors."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    if not path.is_file():
        raise FileNotFoundError(f"{str(path)!r} does not exist; the run directory is incomplete (re-run the flow)")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError) as err:
        raise ValueError(f"{str(path)!r} is unreadable ({err}); re-run the flow") from None


def _comparable(config: dict) -> dict:
    """A flow config with its options filled to their current defaults.

    Runs written before the options were declared once recorded only the step options passed
    (``{"coarse_grain": {...}}``); filling the defaults lets such a run be resumed.
    """
    from rsmi_nn.options import FlowOptions

    config = dict(config)
    config.pop("graph_edges", None)  # runs before the graph's content was fingerprinted ("graph") kept its size
    options = {**config.pop("options", {}), **config.pop("coarse_grain", {})}
    for key in list(config):
        if key in FlowOptions.specs():
            options[key] = config.pop(key)
    options.setdefault("coarse_partition", "corr")  # written before the option (2026-12-01): level >= 1 on |corr|
    try:
        created = FlowOptions.create(**options)
    except ValueError:
        created = None  # an unreadable old config simply differs
    if created is not None:
        options = created.to_dict()
        # a value equal to what its unset default decides for this flow trains the same way: runs written before the
        # default was decided per mode (eval_every, min_delta: 2026-12-01; patience: 2026-12-02) recorded it explicitly
        options.update({key: None for key, value in created.decided_defaults().items() if options[key] == value})
    # how far a flow goes does not change a level it finished: levels, and min_nodes (2 x block_size until
    # 2026-12-02, recorded resolved), are not compared
    options.pop("levels", None)
    options.pop("min_nodes", None)
    return {**config, "options": options}


def prepare(out: str | Path, config: dict, *, overwrite: bool) -> Path:
    """Make ``out`` ready for a flow run with ``config``: keep a matching run (to resume), refuse another.

    Finished levels computed with a different configuration are refused (discarded when ``overwrite``
    is set); what a failed attempt left without finishing a level is discarded, so the corrected
    command simply runs. Levels whose configuration is unknown (no ``flow_config.json``) are discarded.
    """
    out = Path(out)
    path = out / FLOW_CONFIG
    finished = finished_levels(out)
    if path.exists():
        try:
            old = _comparable(read_json(path, "flow config"))
        except ValueError:
            old = None  # a damaged config cannot vouch for its levels
        new = _comparable(config)
        if old is not None and "graph" not in old:
            new.pop("graph", None)
        if old != new:
            if finished and old is not None and not overwrite:
                raise ValueError(f"{out} holds {len(finished)} finished level(s) of a flow with a different "
                                 f"configuration (differs in {_difference(old, new)}); use a new out folder, "
                                 f"delete {str(out / LEVELS)!r}, or pass overwrite=True")
            discard_levels(out)
    elif overwrite or (out / LEVELS).exists():
        if finished:
            log.warning("%s: %d level(s) without %s (their configuration is unknown) are recomputed",
                        out, len(finished), FLOW_CONFIG)
        discard_levels(out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(path, config, sort_keys=True)
    return out


def _difference(old: dict, new: dict) -> str:
    """The keys (or options) in which two flow configs differ, with the old and new values."""
    if set(old) == set(new) and all(old[k] == new[k] for k in old if k != "options"):
        old, new = old["options"], new["options"]
    keys = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
    return ", ".join(f"{k}={old.get(k)!r} (now {new.get(k)!r})" for k in keys)


def finished_levels(out: str | Path) -> list[int]:
    """Numbers of the level folders in ``out`` that hold a ``level.json`` (finished, if complete)."""
    root = Path(out) / LEVELS
    if not root.is_dir():
        return []
    return sorted(int(p.name) for p in root.iterdir() if p.name.isdigit() and (p / LEVEL_JSON).is_file())


def discard_levels(out: str | Path, start: int = 0) -> None:
    """Remove level folders ``start, start + 1, ...`` (all of them and ``flow.json`` when ``start`` is 0)."""
    root = Path(out) / LEVELS
    if start == 0:
        shutil.rmtree(root, ignore_errors=True)
        (Path(out) / FLOW_JSON).unlink(missing_ok=True)
        return
    if root.is_dir():
        for p in root.iterdir():
            if p.name.isdigit() and int(p.name) >= start:
                shutil.rmtree(p, ignore_errors=True)


def write_level(path: Path, *, graph, regions, result, coarse: torch.Tensor, record: dict, timing: dict) -> None:
    """Write one finished level into ``path`` (``level.json`` last, so a half-written level is never read)."""
    path.mkdir(parents=True, exist_ok=True)
    graph.save(path / "graph")
    atomic_save_tensors(path / "regions.safetensors", regions.tensors())
    filters = {"filters": result.filters, "mean": result.mean, "std": result.std, "mi": result.mi,
               "mi_stderr": result.mi_stderr}
    if result.model is not None:  # a non-linear filter: its weights, so that Run.encode can apply it
        filters.update({MODEL_PREFIX + k: v.detach().cpu() for k, v in result.model.state_dict().items()})
    atomic_save_tensors(path / "filters.safetensors", filters)
    atomic_save_tensors(path / "coarse.safetensors", {"samples": coarse})
    atomic_write_json(path / "timing.json", timing, sort_keys=True)
    atomic_write_json(path / LEVEL_JSON, record, sort_keys=True)


LEVEL_FILES = ("graph.safetensors", "graph.json", "regions.safetensors", "filters.safetensors", "coarse.safetensors")


def read_level(path: Path) -> tuple[dict, torch.Tensor] | None:
    """``(record, coarse samples)`` of a finished level in ``path``, or None when it is not complete.

    Complete means ``level.json`` and every file of :data:`LEVEL_FILES` present and readable; a level
    that lacks one (deleted, truncated) is reported and treated as unfinished, so it is recomputed.
    """
    if not (path / LEVEL_JSON).is_file():
        return None
    try:
        record = read_json(path / LEVEL_JSON, "level record")
        for name in LEVEL_FILES:
            if name.endswith(".json"):
                read_json(path / name, "level file")
            elif name != "coarse.safetensors":
                check_safetensors(path / name)
        coarse = load_tensors(path / "coarse.safetensors")["samples"]
    except (OSError, ValueError, KeyError) as err:
        log.warning("%s is damaged (%s); the level is recomputed", path, err)
        return None
    return record, coarse


def same_blocks(path: Path, blocks: torch.Tensor) -> bool:
    """Whether the level in ``path`` was trained on the partition ``blocks [U]`` (its ``regions.safetensors``)."""
    stored = load_tensors(path / "regions.safetensors")["blocks"]
    return stored.shape == blocks.shape and bool(torch.equal(stored.cpu(), blocks.cpu()))


def check_safetensors(path: Path) -> None:
    """Raise a clear error unless ``path`` is a readable safetensors file (header and sizes checked)."""
    from safetensors import SafetensorError, safe_open

    if not path.is_file():
        raise FileNotFoundError(f"{str(path)!r} is missing")
    try:
        with safe_open(str(path), "pt") as f:
            for key in f.keys():
                f.get_slice(key)
    except (SafetensorError, OSError) as err:
        raise ValueError(f"{str(path)!r} is unreadable ({err})") from None


def read_flow(out: str | Path) -> list[dict]:
    """The records of ``flow.json`` (one per finished level); missing or damaged files are clear errors."""
    path = Path(out) / FLOW_JSON
    records = read_json(path, "flow file")
    if not isinstance(records, list):
        raise TypeError(f"{str(path)!r} must hold a list of level records, got {type(records).__name__}")
    return records


def write_flow(out: str | Path, records: list[dict]) -> None:
    """Rewrite ``flow.json`` with the records of the finished levels."""
    atomic_write_json(Path(out) / FLOW_JSON, records, sort_keys=True)
