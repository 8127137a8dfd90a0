"""Export a finished flow: feature maps, graphs and top examples, as files other tools read.

The feature maps are those of :class:`rsmi_nn.run.Run` (level ``l``'s local map ``W_l [U_l, J_l·h]`` and
the map composed from the original units ``M_l [U_0, J_l·h]``; see :mod:`rsmi_nn.run` for their definition).
``export_run(run_dir)`` writes, under ``run_dir``:

- ``feature_maps/level_NNN.safetensors``: ``local_*`` (``W_l``) and ``composed_*`` (``M_l``) as COO
  parts (``*_indices [2, nnz]``, ``*_values [nnz]``, ``*_shape [2]``) and a JSON sidecar
  ``level_NNN.json`` (unit names, block membership, ξ, locality, and per variable: MI with its standard
  error, top units, the histogram of its values, its ``parents`` at the next level and ``children`` at the
  level below — at level 0, the level-0 units of its block);
- ``graphs/level_NNN.safetensors`` (the level's PyG ``Data`` tensors) and ``graphs/level_NNN.graphml``;
- ``examples/level_NNN.json`` (+ ``.png`` sprites for image inputs): the top- and bottom-activating inputs of
  every coarse variable, for text with the variable's value on every token of the context
  (:mod:`rsmi_nn.app.export_examples`), when the run has an activation store;
- ``feature_maps/index.json`` last: its presence marks a complete export.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import torch

from graphs.atomic import atomic_save_tensors, atomic_write, atomic_write_bytes
from rsmi_nn.app.config import read_run_config
from rsmi_nn.app.export_examples import level_examples, variable_histograms
from rsmi_nn.app.files import write_json
from rsmi_nn.run import Level, Run, load_run
from rsmi_nn.rundir import read_flow

__all__ = ["export_run", "is_exported"]

log = logging.getLogger(__name__)

INDEX = Path("feature_maps") / "index.json"


# ---------------------------------------------------------------------------------------------
# writing the export
# ---------------------------------------------------------------------------------------------
def is_exported(run_dir: str | Path) -> bool:
    """True when ``run_dir`` holds a complete export matching its current ``flow.json``."""
    p = Path(run_dir)
    try:
        index = json.loads((p / INDEX).read_text(encoding="utf-8"))
        flow = read_flow(p)
    except (OSError, ValueError, TypeError):  # JSONDecodeError is a ValueError
        return False
    files = [v for e in index.get("levels", []) for k, v in e.items() if isinstance(v, str) and "/" in v]
    return index.get("num_levels") == len(flow) and all((p / f).is_file() for f in files)


def _coo_parts(prefix: str, m) -> dict[str, torch.Tensor]:
    c = m.tocoo()
    return {
        f"{prefix}_indices": torch.from_numpy(np.vstack([c.row, c.col]).astype(np.int64)),
        f"{prefix}_values": torch.from_numpy(c.data.astype(np.float32)),
        f"{prefix}_shape": torch.tensor(c.shape, dtype=torch.int64),
    }


def _find_store(run: Run, store):
    """The activation store of a model run (``run_dir/activations``, or ``store:<dir>`` in its config)."""
    if store is None:
        name = str((read_run_config(run.path).get("source") or {}).get("name", ""))
        cand = Path(name[len("store:"):]) if name.startswith("store:") else run.path / "activations"
        if not (cand / "manifest.json").is_file():
            return None
        store = cand
    from graphs import ActivationStore

    return store if isinstance(store, ActivationStore) else ActivationStore.open(store)


def _write_sprite(path: Path, examples: dict, max_rows: int) -> bool:
    """One PNG per level: a row of top-activating input images per coarse variable (any ``C×H×W``)."""
    from rsmi_nn.app.plots import image_grid_png, to_picture

    first = examples["variables"][0][0].get("input") if examples["variables"] else None
    if first is None or to_picture(np.asarray(first, dtype=np.float32)) is None:
        return False
    rows = [[np.asarray(ex["input"], dtype=np.float32) for ex in var] for var in examples["variables"][:max_rows]]
    atomic_write_bytes(path, image_grid_png(rows))
    return True


def _relatives(run: Run, index: int) -> tuple[list[list[int]], list[list[int]]]:
    """Per coarse variable of level ``index``: its parents (the variables at ``index + 1`` of the block its
    unit joined; none at the last level or where the next graph dropped it) and its children (the variables
    at ``index - 1`` that are the units of its block; at level 0, the level-0 unit indices of its block)."""
    from rsmi_nn.run import _input_columns  # the one definition of which columns became the next level's units

    level = run.levels[index]
    parents: list[list[int]] = [[] for _ in range(level.num_coarse)]
    if index + 1 < len(run.levels):
        nxt = run.levels[index + 1]
        cols = _input_columns(level, nxt)
        h = nxt.hidden
        for col, block in zip(cols.tolist(), nxt.blocks.tolist()):
            parents[col] = [block * h + c for c in range(h)]
    members: list[list[int]] = [[] for _ in range(level.num_blocks)]
    for u, b in enumerate(level.blocks.tolist()):
        members[b].append(u)
    if index > 0:
        cols = _input_columns(run.levels[index - 1], level).tolist()
        members = [[cols[u] for u in m] for m in members]
    children = [members[v // level.hidden] for v in range(level.num_coarse)]
    return parents, children


def _save_graph(level: Level, out: Path, graphml: bool) -> None:
    # the fields of the level's PyG ``Data`` (``ActivationGraph.to_pyg``), written directly so that
    # exporting does not import torch_geometric; ``Run.pyg(level)`` rebuilds the ``Data`` object
    g = level.graph
    tensors = {"edge_index": g.edge_index, "edge_weight": g.edge_weight,
               "num_nodes": torch.tensor([g.num_nodes]), "blocks": level.blocks}
    atomic_save_tensors(out / f"level_{level.index:03d}.safetensors", tensors,
                 metadata={"format": "torch_geometric.data.Data fields", "names": json.dumps(g.names)})
    if graphml:
        import networkx as nx

        G = g.to_networkx()
        G.graph.clear()
        G.graph["metadata"] = json.dumps(g.metadata)
        blocks = level.blocks.tolist()
        for i in G.nodes:
            G.nodes[i]["block"] = int(blocks[i])
        atomic_write(out / f"level_{level.index:03d}.graphml", lambda tmp: nx.write_graphml(G, tmp))


def export_run(run_dir: str | Path, *, top_examples: int = 8, top_units: int = 10, graphml: bool = True,
               store=None, max_sprite_rows: int = 64) -> Path:
    """Export the feature maps, graphs and top examples of a finished flow (see the module doc).

    Parameters
    ----------
    run_dir : the flow's output directory.
    top_examples : top-activating inputs kept per coarse variable (model runs only).
    top_units : level-0 units listed per coarse variable in the sidecar.
    graphml : also write each level's graph as GraphML.
    store : the activation store (path or ``ActivationStore``); default ``run_dir/activations`` if present.

    Returns
    -------
    Path of ``feature_maps/index.json`` (written last: its presence marks a complete export).
    """
    run = load_run(run_dir)
    root = run.path
    store = _find_store(run, store)
    fm_dir, g_dir, ex_dir = root / "feature_maps", root / "graphs", root / "examples"
    level0 = run.unit_names
    entries = []
    for level in run.levels:
        local, composed = level.feature_map_sparse, run.feature_map_sparse(level.index)
        tensors = {**_coo_parts("local", local), **_coo_parts("composed", composed)}
        stem = f"level_{level.index:03d}"
        atomic_save_tensors(fm_dir / f"{stem}.safetensors", tensors, metadata={"format": "coo"})
        blocks = level.blocks.tolist()
        members: list[list[str]] = [[] for _ in range(level.num_blocks)]
        for u, b in enumerate(blocks):
            members[b].append(level.names[u])
        var_mi = level.variable_mi().tolist()
        stderr = level._filters.get("mi_stderr")
        var_se = stderr.double().repeat_interleave(level.hidden).tolist() if stderr is not None else None
        hists = variable_histograms(level.coarse_samples())
        parents, children = _relatives(run, level.index)
        variables = []
        for v in range(level.num_coarse):
            variables.append({
                "variable": v, "block": v // level.hidden, "component": v % level.hidden, "mi": var_mi[v],
                "mi_stderr": var_se[v] if var_se is not None else None,
                "top_units": [{"name": n, "weight": w} for n, w in run.top_units(level.index, v, top_units)],
                "parents": parents[v], "children": children[v], "histogram": hists[v],
            })
        m = level.metrics
        sidecar = {
            "level": level.index,
            "format": "coo: *_indices [2, nnz] (row, col), *_values [nnz], *_shape [2]",
            "local_shape": list(local.shape), "composed_shape": list(composed.shape),
            "hidden": level.hidden, "num_blocks": level.num_blocks,
            "correlation_length": m.get("correlation_length"),
            "correlation_length_level0": m.get("correlation_length_level0"),
            "locality": m.get("locality"), "mi_mean": m.get("mi_mean"), "mi_ceiling": m.get("mi_ceiling"),
            "bound": m.get("bound"),
            "unit_names": level.names, "blocks": blocks, "block_members": members, "variables": variables,
        }
        write_json(fm_dir / f"{stem}.json", sidecar, indent=None)
        _save_graph(level, g_dir, graphml)
        entry = {"level": level.index, "feature_map": f"feature_maps/{stem}.safetensors",
                 "sidecar": f"feature_maps/{stem}.json", "graph": f"graphs/{stem}.safetensors",
                 "num_units": level.num_units, "num_coarse": level.num_coarse}
        if graphml:
            entry["graphml"] = f"graphs/{stem}.graphml"
        if store is not None:
            examples = level_examples(level, store, top_examples)
            if examples is not None:
                write_json(ex_dir / f"{stem}.json", examples, indent=None)
                entry["examples"] = f"examples/{stem}.json"
                pictures = examples["kind"] not in ("text", "tokens")  # token ids are no image, whatever their length
                if pictures and _write_sprite(ex_dir / f"{stem}.png", examples, max_sprite_rows):
                    entry["sprite"] = f"examples/{stem}.png"
        entries.append(entry)
        log.info("exported level %d: %d units -> %d coarse variables", level.index, level.num_units,
                 level.num_coarse)
    index = {"num_levels": len(run.levels), "num_units_level0": len(level0), "unit_names_level0": level0,
             "levels": entries}
    return write_json(root / INDEX, index, indent=None)
