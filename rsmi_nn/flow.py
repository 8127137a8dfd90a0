"""The decimation flow: partition → regions → RSMI step → coarse samples → next graph, level by level.

Each finished level is written to ``out/levels/NNN/`` (graph, regions, filters, coarse samples,
``level.json`` last — a level is complete iff its ``level.json`` exists) and ``out/flow.json``
(one record per finished level) is rewritten atomically. Run again on the same ``out`` with the
same configuration and data, the flow loads its finished levels and continues from there; every
level is seeded from ``(seed, level)``, so a resumed flow writes the same bytes as an
uninterrupted one. Timings go to ``levels/NNN/timing.json`` (they are not reproducible).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from estimators.validation import check_choice, check_positive_int, check_samples
from graphs.atomic import atomic_write_bytes
from rsmi_nn.coarse_graining import CoarseGrainResult, coarse_grain
from rsmi_nn.observables import correlation_length, graph_sizes, locality_preservation

__all__ = ["FlowResult", "level_seed", "run_flow"]

log = logging.getLogger(__name__)

_CONFIG = "flow_config.json"


@dataclass
class FlowResult:
    """What a flow produced: one record per finished level (as in ``flow.json``) and the level objects.

    ``results[l]`` is the level's :class:`CoarseGrainResult` (None for a level loaded on resume),
    ``graphs[l]`` its input graph, ``blocks[l]`` its partition, ``samples`` the last level's coarse
    samples ``[N, J*hidden]``; ``stopped`` says why the flow ended early (None if it ran all levels).
    """

    records: list[dict]
    out: Path | None
    graphs: list = field(default_factory=list)
    blocks: list = field(default_factory=list)
    results: list[CoarseGrainResult | None] = field(default_factory=list)
    samples: torch.Tensor | None = None
    stopped: str | None = None


def level_seed(seed: int, level: int) -> int:
    """The seed of level ``level``: a hash of ``(seed, level)`` (independent of earlier levels' randomness)."""
    return int(np.random.SeedSequence([seed, level]).generate_state(1)[0] % (2**31))


def _atomic_json(path: Path, obj) -> None:
    atomic_write_bytes(path, json.dumps(obj, indent=1, sort_keys=True, allow_nan=True).encode())


def _atomic_tensors(path: Path, tensors: dict) -> None:
    from safetensors.torch import save

    atomic_write_bytes(path, save({k: v.detach().cpu().contiguous() for k, v in tensors.items()}))


def _fingerprint(x: torch.Tensor) -> str:
    return hashlib.sha256(x.detach().cpu().contiguous().numpy().tobytes()).hexdigest()[:16]


def _lattice_side(graph) -> tuple[int, bool] | None:
    lat = (graph.metadata or {}).get("lattice")
    if lat is None:
        return None
    return int(lat["L"]), bool(lat.get("periodic", True))


def run_flow(
    x,
    graph,
    levels: int = 2,
    block_size: int = 4,
    buffer: int = 1,
    env: int = 1,
    out: str | Path | None = None,
    seed: int = 0,
    *,
    hidden: int = 1,
    max_env: int | None = 64,
    rebuild: str = "auto",
    k: int = 16,
    min_nodes: int | None = None,
    overwrite: bool = False,
    device: str | torch.device = "auto",
    progress: bool = True,
    callback=None,
    **coarse_grain_kwargs,
) -> FlowResult:
    """Iterate RSMI coarse-graining as a decimation flow and track its observables.

    Parameters
    ----------
    x : Tensor of shape (n_samples, n_units), the level-0 samples.
    graph : ActivationGraph on the same units (a lattice from ``graphs.lattice_graph`` is recognised).
    levels : number of coarse-graining steps requested.
    block_size : nodes per block; on a lattice ``b×b`` squares with ``b = sqrt(block_size)``.
    buffer, env, max_env : region widths in hops and the environment cap (``graphs.make_regions``).
    out : run folder (``flow.json``, ``flow_config.json``, ``levels/NNN/``); None keeps nothing on disk.
    seed : level ``l`` uses ``level_seed(seed, l)``.
    hidden : coarse components per block.
    rebuild : next graph — "auto" (quotient lattice for a lattice, else "samples"), "samples"
        (``graphs.build_graph`` on the coarse samples, top-``k`` |corr|) or "quotient" (``graph.quotient``).
    min_nodes : stop when a level has fewer nodes (default ``2 * block_size``); the reason is logged.
    overwrite : discard an existing run in ``out`` whose configuration differs.
    callback : called as ``callback(level, record)`` after each level is saved.
    **coarse_grain_kwargs : passed to :func:`rsmi_nn.coarse_grain` (``binarize``, ``steps``, ...).

    Returns
    -------
    FlowResult; ``flow.json`` records hold ``level, num_nodes, num_blocks, num_edges (undirected),
    correlation_length`` (this level's input, in its own hops), ``correlation_length_level0``,
    ``correlation_fit``, ``correlation_length_out`` (the coarse samples on the next graph),
    ``locality``, ``locality_chance``, ``mi_mean, mi_per_block, mi_stderr_per_block, mi_ceiling, bound, hidden``.
    """
    from graphs import (
        ActivationGraph,
        build_graph,
        lattice_blocks,
        lattice_graph,
        make_regions,
        partition,
    )

    levels = check_positive_int(levels, name="levels")
    block_size = check_positive_int(block_size, name="block_size", minimum=2)
    hidden = check_positive_int(hidden, name="hidden")
    seed = check_positive_int(seed, name="seed", minimum=0)
    k = check_positive_int(k, name="k")
    check_choice(rebuild, ("auto", "samples", "quotient"), name="rebuild")
    min_nodes = 2 * block_size if min_nodes is None else check_positive_int(min_nodes, name="min_nodes")
    if not isinstance(graph, ActivationGraph):
        raise ValueError(f"graph must be a graphs.ActivationGraph, got {type(graph).__name__}")
    x = check_samples(x, name="x", min_samples=4)
    if x.shape[1] != graph.num_nodes:
        raise ValueError(f"x has {x.shape[1]} units but the graph has {graph.num_nodes} nodes; "
                         "build the graph from the same units as x")
    if block_size > graph.num_nodes:
        raise ValueError(f"block_size={block_size} exceeds the graph's {graph.num_nodes} nodes; "
                         f"choose block_size <= {graph.num_nodes}")
    lattice = _lattice_side(graph) if rebuild in ("auto", "quotient") else None
    b = None
    if lattice is not None:
        b = math.isqrt(block_size)
        if b * b != block_size or lattice[0] % b:
            raise ValueError(f"block_size={block_size} on an L={lattice[0]} lattice needs b = sqrt(block_size) an "
                             f"integer dividing L; use e.g. block_size=4 (2×2) or pass rebuild='samples'")
    config = {"block_size": block_size, "buffer": buffer, "env": env, "seed": seed, "hidden": hidden,
              "max_env": max_env, "rebuild": rebuild, "k": k, "min_nodes": min_nodes,
              "coarse_grain": {key: coarse_grain_kwargs[key] for key in sorted(coarse_grain_kwargs)},
              "n_samples": int(x.shape[0]), "n_units": int(x.shape[1]), "data": _fingerprint(x),
              "graph_edges": int(graph.num_edges)}
    try:
        json.dumps(config)
    except TypeError as err:
        raise ValueError(f"coarse_grain options must be JSON-able to be recorded for resume: {err}") from err

    records: list[dict] = []
    result = FlowResult(records=records, out=Path(out) if out is not None else None)
    if out is not None:
        out = Path(out)
        cfg_path = out / _CONFIG
        if cfg_path.exists():
            old = json.loads(cfg_path.read_text())
            if old != config:
                if not overwrite:
                    diff = sorted(key for key in set(old) | set(config) if old.get(key) != config.get(key))
                    raise ValueError(f"{out} holds a flow with a different configuration (differs in {diff}); "
                                     "use a new out folder or pass overwrite=True")
                shutil.rmtree(out / "levels", ignore_errors=True)
                (out / "flow.json").unlink(missing_ok=True)
        elif overwrite:
            shutil.rmtree(out / "levels", ignore_errors=True)
        out.mkdir(parents=True, exist_ok=True)
        _atomic_json(cfg_path, config)

    cur_x, cur_graph = x, graph
    for level in range(levels):
        level_dir = out / "levels" / f"{level:03d}" if out is not None else None
        s = level_seed(seed, level)
        if cur_graph.num_nodes < min_nodes or cur_graph.num_nodes < 2 * block_size:
            result.stopped = (f"level {level} has {cur_graph.num_nodes} nodes, fewer than min_nodes={min_nodes} "
                              f"or 2 × block_size={2 * block_size}")
            log.info("flow stops: %s", result.stopped)
            break
        cur_lat = _lattice_side(cur_graph) if lattice is not None else None
        if cur_lat is not None:
            if cur_lat[0] % b or cur_lat[0] // b < 2:
                result.stopped = f"level {level}: an L={cur_lat[0]} lattice cannot be cut into {b}×{b} blocks"
                log.info("flow stops: %s", result.stopped)
                break
            blocks = lattice_blocks(cur_lat[0], b)
        else:
            blocks = partition(cur_graph, block_size, seed=s)
        regions = make_regions(cur_graph, blocks, buffer=buffer, env=env, max_env=max_env, seed=s)
        if level > 0 and regions.empty_environment.numel():
            result.stopped = (f"level {level}: {regions.empty_environment.numel()} block(s) have an empty environment "
                              f"on a graph of {cur_graph.num_nodes} nodes")
            log.info("flow stops: %s", result.stopped)
            break

        done = level_dir is not None and (level_dir / "level.json").exists()
        if done:
            from safetensors.torch import load_file

            record = json.loads((level_dir / "level.json").read_text())
            coarse = load_file(str(level_dir / "coarse.safetensors"))["samples"]
            res = None
            log.info("level %d: loaded from %s", level, level_dir)
        else:
            t0 = time.time()
            opts = dict(coarse_grain_kwargs)
            opts.setdefault("allow_constant", level > 0)
            res = coarse_grain(cur_x, regions, hidden=hidden, seed=s, device=device, progress=progress, **opts)
            coarse = res.transform(cur_x)
            t1 = time.time()

        # the next level's samples and graph
        node_blocks = torch.arange(coarse.shape[1]) // hidden
        if cur_lat is not None and hidden == 1:
            next_graph = lattice_graph(cur_lat[0] // b, periodic=cur_lat[1])
            next_x = coarse
        elif rebuild == "quotient" or (cur_lat is not None and rebuild == "auto"):
            if hidden != 1:
                next_graph = build_graph(coarse, k=min(k, coarse.shape[1] - 1), device=device)
            else:
                next_graph = cur_graph.quotient(blocks)
            next_x = coarse
        else:
            next_graph = build_graph(coarse, k=min(k, coarse.shape[1] - 1), device=device)
            next_x = coarse
        kept = next_graph.metadata.get("unit_index")
        if kept is not None and len(kept) != coarse.shape[1]:
            log.warning("level %d: %d constant coarse unit(s) left out of the next level",
                        level, coarse.shape[1] - len(kept))
            next_x = coarse[:, torch.as_tensor(kept)]
            node_blocks = node_blocks[torch.as_tensor(kept)]

        if not done:
            xi = correlation_length(cur_x, cur_graph, seed=s)
            xi_out = correlation_length(next_x, next_graph, seed=s) if next_graph.num_edges else None
            if next_graph.num_edges and (next_graph.metadata or {}).get("lattice") is None and rebuild != "quotient":
                corr_graph = next_graph
            else:
                corr_graph = build_graph(next_x, k=min(k, next_x.shape[1] - 1), device=device)
            loc = locality_preservation(corr_graph, blocks, cur_graph, node_blocks=node_blocks)
            if lattice is not None:
                scale, method = float(b**level), "b^level"
            else:
                scale, method = math.sqrt(graph.num_nodes / cur_graph.num_nodes), "sqrt(num_nodes_0 / num_nodes)"
            mi = res.mi.double()
            record = {
                "level": level, **graph_sizes(cur_graph), "num_blocks": regions.num_blocks,
                "block_sizes": {"min": int(regions.visible_mask.sum(1).min()),
                                "max": int(regions.visible_mask.sum(1).max())},
                "environment_sizes": {"min": int(regions.environment_mask.sum(1).min()),
                                      "max": int(regions.environment_mask.sum(1).max())},
                "correlation_length": xi["xi"], "correlation_length_level0": xi["xi"] * scale,
                "correlation_length_level0_method": method,
                "correlation_fit": {key: xi[key] for key in ("fit_range", "r2", "status", "amplitude", "noise_floor")},
                "correlation_curve": {"r": xi["r"], "c": xi["c"]},
                "correlation_length_out": None if xi_out is None else xi_out["xi"],
                "locality": loc["locality"], "locality_chance": loc["chance"], "locality_edges": loc["n_edges"],
                "mi_mean": float(mi.mean()), "mi_per_block": [float(v) for v in mi],
                "mi_stderr_per_block": [float(v) for v in res.mi_stderr],
                "mi_ceiling": res.mi_ceiling, "bound": res.bound, "hidden": hidden, "block_size": block_size,
                "binarize": res.binarize, "seed": s, "steps_run": res.info["steps_run"],
                "collapsed_blocks": res.info["collapsed_blocks"], "next_num_nodes": next_graph.num_nodes,
            }
            if level_dir is not None:
                level_dir.mkdir(parents=True, exist_ok=True)
                cur_graph.save(level_dir / "graph")
                _atomic_tensors(level_dir / "regions.safetensors", regions.tensors())
                _atomic_tensors(level_dir / "filters.safetensors",
                                {"filters": res.filters, "mean": res.mean, "std": res.std, "mi": res.mi,
                                 "mi_stderr": res.mi_stderr})
                _atomic_tensors(level_dir / "coarse.safetensors", {"samples": coarse})
                _atomic_json(level_dir / "timing.json", {"seconds_coarse_grain": t1 - t0,
                                                         "seconds_level": time.time() - t0})
                _atomic_json(level_dir / "level.json", record)
            log.info("level %d: %d nodes, %d blocks, ξ = %.3f hops, locality %.3f, MI mean %.4f nats",
                     level, record["num_nodes"], record["num_blocks"], record["correlation_length"],
                     record["locality"], record["mi_mean"])
        records.append(record)
        result.graphs.append(cur_graph)
        result.blocks.append(blocks)
        result.results.append(res)
        if out is not None:
            _atomic_json(out / "flow.json", records)
        if callback is not None:
            callback(level, record)
        cur_x, cur_graph = next_x, next_graph
    result.samples = cur_x
    return result
