"""The data of the report's dashboard: every coarse variable of every level, as one compact JSON object.

:func:`dashboard_data` reads the export (``feature_maps/level_NNN.json`` sidecars, ``examples/level_NNN.json``)
and, when present, ``evaluation.json`` (each level's ``variable_effect``), and returns what
``report_assets/dashboard.js`` draws. Layout (per level, columns indexed by variable ``v = block * hidden + c``)::

    {"units": {"prefixes": [...], "names": [[prefix index, suffix], ...]},   # level-0 unit names, compressed
     "inputs": {"<input index>": [token, ...]},        # text runs: the recorded tokens of each shown input
     "levels": [{"level", "hidden", "num_units", "num_blocks", "kind", "picture": [H, W(, 3)] | null,
                 "mi": [V], "se": [V] | null, "effect": [V] | null, "scale": [V] (max |value|),
                 "hist": [[min, max, [counts]], ...], "units": [[[unit index, weight], ...], ...],
                 "parents": [[...]], "children": [[...]], "top": [[example, ...]], "bottom": [[...]],
                 "lattice": null | {"side": L, "weights": [base64 int8 L*L per variable]},
                 "graph": {...} (see :mod:`rsmi_nn.app.report_graph`)}]}

An example is ``[value, input, start, focus, [shade, ...]]`` for a token in context (``shade`` = round(100 ·
value / scale) on every token ``inputs[input][start:start + len]``), ``[value, text]`` for a text with its token
marked ``[[...]]``, or ``[value, base64 uint8 picture]`` for an image input.
"""

from __future__ import annotations

import base64
import json
import logging
from pathlib import Path

import numpy as np

from rsmi_nn.app.plots import to_picture
from rsmi_nn.app.report_graph import level_graph

__all__ = ["dashboard_data", "read_effects"]

log = logging.getLogger(__name__)


def read_effects(root: Path) -> dict[int, list[float]]:
    """``{level: variable_effect [J*h]}`` from ``root/evaluation.json`` ({} when absent or without effects).

    Any object in the file with a ``variable_effect`` list counts; its ``level`` field (or its order among
    such objects) says which level it belongs to.
    """
    path = root / "evaluation.json"
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        log.warning("could not read %s (%s); the report shows no output effects", path, err)
        return {}
    found: list[dict] = []

    def walk(obj) -> None:
        if isinstance(obj, dict):
            if isinstance(obj.get("variable_effect"), list):
                found.append(obj)
                return
            for value in obj.values():
                walk(value)
        elif isinstance(obj, list):
            for value in obj:
                walk(value)

    walk(data)
    out: dict[int, list[float]] = {}
    for i, entry in enumerate(found):
        level = entry.get("level", i)
        if isinstance(level, int) and level not in out:
            out[level] = [float("nan") if e is None else float(e) for e in entry["variable_effect"]]
    return out


def _unit_table(names: list[str]) -> tuple[dict, dict[str, int]]:
    """Names ``"prefix:suffix"`` as a prefix table plus ``[prefix index, suffix]`` pairs, and name → index."""
    prefixes: dict[str, int] = {}
    pairs = []
    for n in names:
        head, sep, tail = n.rpartition(":")
        if not sep:
            head, tail = "", n
        pairs.append([prefixes.setdefault(head, len(prefixes)), tail])
    return {"prefixes": list(prefixes), "names": pairs}, {n: i for i, n in enumerate(names)}


def _round(values, digits: int = 4) -> list:
    return [None if v is None or not np.isfinite(v) else float(f"{v:.{digits}g}") for v in values]


def _picture_b64(x) -> tuple[str, list[int]] | None:
    pic = to_picture(np.asarray(x, dtype=np.float32))
    if pic is None:
        return None
    q = np.round(pic * 255).astype(np.uint8)
    return base64.b64encode(q.tobytes()).decode("ascii"), list(pic.shape)


def _example(ex: dict, scale: float, inputs: dict[str, list[str]], shape: list) -> list | None:
    value = float(f"{float(ex['value']):.4g}")
    if "context_tokens" in ex:
        key = str(int(ex["input_index"]))
        toks, start = inputs.setdefault(key, []), int(ex["context_start"])
        if len(toks) < start + len(ex["context_tokens"]):
            toks.extend([""] * (start + len(ex["context_tokens"]) - len(toks)))
        toks[start : start + len(ex["context_tokens"])] = ex["context_tokens"]
        shades = [int(round(100 * float(v) / scale)) if scale > 0 else 0 for v in ex["context_values"]]
        return [value, int(ex["input_index"]), start, int(ex["context_focus"]), shades]
    if "text" in ex:
        return [value, str(ex["text"])]
    if "input" in ex:
        pic = _picture_b64(ex["input"])
        if pic is None:
            return None
        shape[:] = pic[1]
        return [value, pic[0]]
    return None


def _examples(lists: list[list[dict]], scales: list[float], inputs: dict, shape: list) -> list[list]:
    out = []
    for v, items in enumerate(lists):
        encoded = (_example(ex, scales[v], inputs, shape) for ex in items)
        out.append([e for e in encoded if e is not None])
    return out


def _lattice(run, level_index: int, num_vars: int) -> dict | None:
    """Weights of each variable on the level-0 lattice as base64 int8 (scaled to ±127), for lattice runs."""
    lat = (run.levels[0].graph.metadata or {}).get("lattice") if run.levels else None
    side = int(lat["L"]) if lat else 0
    if not side or side * side != run.num_units:
        return None
    dense = run.feature_map_sparse(level_index).toarray()
    weights = []
    for v in range(num_vars):
        w = dense[:, v]
        m = float(np.abs(w).max()) or 1.0
        weights.append(base64.b64encode(np.round(127 * w / m).astype(np.int8).tobytes()).decode("ascii"))
    return {"side": side, "weights": weights}


def _level(run, level, root: Path, unit_index: dict[str, int], effects: dict, inputs: dict, top_units: int,
           seed: int) -> dict:
    side = json.loads((root / "feature_maps" / f"level_{level.index:03d}.json").read_text(encoding="utf-8"))
    variables = side["variables"]
    hists = [v.get("histogram") or {} for v in variables]
    scales = [max(abs(h.get("min") or 0.0), abs(h.get("max") or 0.0)) for h in hists]
    examples = run.examples(level.index) or {}
    shape: list = []
    effect = effects.get(level.index)
    if effect is not None and len(effect) != len(variables):
        log.warning("evaluation.json has %d effects for level %d but it has %d variables; not shown",
                    len(effect), level.index, len(variables))
        effect = None
    se = [v.get("mi_stderr") for v in variables]
    return {
        "level": level.index, "hidden": level.hidden, "num_units": level.num_units, "num_blocks": level.num_blocks,
        "kind": examples.get("kind"),
        "mi": _round([v["mi"] for v in variables]),
        "se": _round(se) if any(s is not None for s in se) else None,
        "effect": _round(effect) if effect is not None else None,
        "scale": _round(scales),
        "hist": [[_round([h.get("min", 0.0)])[0], _round([h.get("max", 0.0)])[0], h.get("counts", [])]
                 for h in hists],
        "units": [[[unit_index.get(u["name"], -1), float(f"{u['weight']:.3g}")] for u in v["top_units"][:top_units]]
                  for v in variables],
        "parents": [v.get("parents", []) for v in variables],
        "children": [v.get("children", []) for v in variables],
        "top": _examples(examples.get("variables", []), scales, inputs, shape),
        "bottom": _examples(examples.get("bottom", []), scales, inputs, shape),
        "picture": shape or None,
        "lattice": _lattice(run, level.index, len(variables)),
        "graph": level_graph(run, level.index, seed=seed),
    }


def dashboard_data(run, root: Path, *, top_units: int = 10, seed: int = 0) -> dict:
    """The dashboard's JSON object for an exported run (see the module doc)."""
    units, unit_index = _unit_table(run.unit_names)
    effects = read_effects(root)
    inputs: dict[str, list[str]] = {}
    levels = [_level(run, lv, root, unit_index, effects, inputs, top_units, seed) for lv in run.levels]
    return {"units": units, "inputs": inputs, "levels": levels, "has_effect": bool(effects)}
