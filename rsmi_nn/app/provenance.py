"""What a run was made from: content hashes of every input, per stage, in ``RUN_DIR/fingerprints.json``.

A stage's entry is written when the stage finishes and lists the digests of what it read: the code
(a hash of the installed ``rsmi_nn``, ``graphs`` and ``estimators`` sources), the configuration
sections it depends on, and the input files (a samples or graph file, a store's manifest and shards,
a ``python:`` model file). A re-run reuses a finished stage only when every entry still matches;
:func:`check_stage` names the first that differs.

::

    {"record": {"code": "...", "source": {...}, "model": "..."},
     "graph":  {"code": "...", "graph": {...}, "input": "...", "given_graph": "..."}}
"""

from __future__ import annotations

import hashlib
import json
from functools import lru_cache
from pathlib import Path

from rsmi_nn.app.files import write_json

__all__ = ["FINGERPRINTS", "check_stage", "code_changed", "code_version", "file_digest", "files_digest", "model_digest",
           "read_fingerprints", "record_stage_fingerprint", "store_digest"]

FINGERPRINTS = "fingerprints.json"
_CHUNK = 1 << 22


def file_digest(path: str | Path) -> str:
    """sha256 of a file's bytes (first 16 hex digits)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(_CHUNK):
            h.update(block)
    return h.hexdigest()[:16]


def files_digest(paths) -> str:
    """One digest of several files (names and contents, in the given order)."""
    h = hashlib.sha256()
    for p in paths:
        h.update(Path(p).name.encode("utf-8") + b"\0" + file_digest(p).encode("ascii"))
    return h.hexdigest()[:16]


def store_digest(store_dir: str | Path) -> str:
    """Digest of an activation store: its manifest and every shard and inputs file it lists."""
    root = Path(store_dir)
    manifest = json.loads((root / "manifest.json").read_text(encoding="utf-8"))
    files = [root / "manifest.json"] + [root / s["file"] for s in manifest.get("shards", [])]
    files += sorted(p for p in root.iterdir() if p.is_file() and p.name.startswith("inputs"))
    return files_digest(files)


def model_digest(name: str) -> str | None:
    """Digest of the files a model source is loaded from (``python:FILE.py:...``, ``hf:DIR``); None for built-ins."""
    if name.startswith("hf:"):
        folder = Path(name[3:])
        return files_digest(sorted(p for p in folder.rglob("*") if p.is_file())) if folder.is_dir() else None
    if name.startswith("python:"):
        module = name[len("python:"):].rsplit(":", 1)[0]
        return file_digest(module) if module.endswith(".py") and Path(module).is_file() else module
    return None


@lru_cache(maxsize=1)
def code_version() -> str:
    """``<version>+<digest>``: the package version and a hash of the engine's and application's sources."""
    import estimators
    import graphs
    import rsmi_nn

    h = hashlib.sha256()
    for pkg in (estimators, graphs, rsmi_nn):
        root = Path(pkg.__file__).parent
        for p in sorted(root.rglob("*.py")):
            h.update(str(p.relative_to(root.parent)).encode("utf-8") + b"\0" + p.read_bytes())
    return f"{rsmi_nn.__version__}+{h.hexdigest()[:12]}"


def read_fingerprints(out: Path) -> dict:
    """The stages' fingerprints of the run in ``out`` (``{}`` when none or unreadable)."""
    try:
        data = json.loads((out / FINGERPRINTS).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def record_stage_fingerprint(out: Path, stage: str, entry: dict) -> None:
    """Store ``entry`` (plus the code version) as the fingerprint of the finished ``stage``."""
    data = read_fingerprints(out)
    data[stage] = {"code": code_version(), **entry}
    write_json(out / FINGERPRINTS, data)


def check_stage(out: Path, stage: str, entry: dict, *, remove: str) -> bool:
    """Whether the finished ``stage`` in ``out`` may be reused with inputs ``entry``.

    True when its fingerprint matches; False when it has none (a run made before fingerprints, or a
    stage that never finished) or was made by another version of the code: recompute it. An input or
    setting that differs is an error naming the first that changed and what to delete (``remove``) to
    recompute from there.
    """
    saved = read_fingerprints(out).get(stage)
    if saved is None or saved.get("code") != code_version():
        return False  # recomputed whatever its inputs: a stage before it may have been recomputed to other bytes
    for key, value in entry.items():
        if saved.get(key) != value:
            what = _describe(key, saved.get(key), value)
            raise ValueError(f"{str(out)!r}: its {stage} stage was made with another {what}; "
                             f"pass a new --out directory, or delete {remove} to recompute from there")
    return True


def code_changed(out: Path) -> str | None:
    """The code version that made the finished stages in ``out`` when it is not this one (else None): the
    same command then recomputes every stage (:func:`check_stage` returns False) and the flow's levels."""
    versions = {e.get("code") for e in read_fingerprints(out).values() if isinstance(e, dict)}
    versions.discard(None)
    old = next(iter(versions - {code_version()}), None)
    return old


def _describe(key: str, old, new) -> str:
    if isinstance(old, dict) and isinstance(new, dict):
        changed = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
        if changed:
            k = changed[0]
            return f"{key}.{k} ({old.get(k)!r}, now {new.get(k)!r})"
    if key == "code":
        return f"version of rsmi-nn ({old}, now {new})"
    return f"{key} (content hash {old}, now {new}: the file changed)"
