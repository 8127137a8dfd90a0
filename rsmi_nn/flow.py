"""The decimation flow: partition → regions → RSMI step → coarse samples → next graph, level by level.

Each finished level is written by :mod:`rsmi_nn.rundir` (``levels/NNN/``, then ``flow.json``). Run
again on the same ``out`` with the same options and data, the flow loads its finished levels and
continues from there; every level is seeded from ``(seed, level)``, so a resumed flow writes the same
bytes as an uninterrupted one.

Inside a ``torch.distributed`` process group (``torchrun``) every rank runs the flow: the RSMI step and
the rebuilt graphs are sharded (:mod:`rsmi_nn.distributed`, :mod:`graphs.distributed`), rank 0 alone
reads and writes ``out`` (what it reads is broadcast), and every rank returns the same result.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from estimators.validation import check_positive_int, check_samples
from graphs.distributed import agreed, broadcast_object, is_writer
from rsmi_nn import rundir
from rsmi_nn.coarse_graining import CoarseGrainResult, check_step, coarse_grain
from rsmi_nn.level_regions import level_regions
from rsmi_nn.observables import correlation_length, graph_sizes, locality_preservation
from rsmi_nn.options import FlowOptions, GraphOptions, split_overrides
from rsmi_nn.unit_inputs import UNIT_INPUTS, cover_next, step_inputs, unit_result

__all__ = ["FlowResult", "check_flow", "level_seed", "run_flow"]

log = logging.getLogger(__name__)


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


@dataclass
class _Setting:
    """What every level of one flow shares: its options, the level-0 graph, the lattice block side."""

    options: FlowOptions
    k: int
    graph0: object
    lattice_block: int | None  # b of b×b blocks when the flow follows a lattice, else None
    seed: int
    device: object
    progress: bool


def level_seed(seed: int, level: int) -> int:
    """The seed of level ``level``: a hash of ``(seed, level)`` (independent of earlier levels' randomness)."""
    return int(np.random.SeedSequence([seed, level]).generate_state(1)[0] % (2**31))


def _lattice_side(graph) -> tuple[int, bool] | None:
    lat = (graph.metadata or {}).get("lattice")
    return None if lat is None else (int(lat["L"]), bool(lat.get("periodic", True)))


def run_flow(x, graph, options: FlowOptions | None = None, *, graph_options: GraphOptions | None = None,
             out: str | Path | None = None, seed: int = 0, device: str | torch.device = "auto",
             progress: bool = True, overwrite: bool = False, callback=None, **overrides) -> FlowResult:
    """Iterate RSMI coarse-graining as a decimation flow and track its observables.

    Parameters
    ----------
    x : Tensor of shape (n_samples, n_units), the level-0 samples.
    graph : ActivationGraph on the same units (a lattice from ``graphs.lattice_graph`` is recognised).
    options : :class:`rsmi_nn.options.FlowOptions` (levels, block_size, buffer, env, max_env, rebuild,
        min_nodes, and every option of the RSMI step); ``**overrides`` set any of them by name, and ``k``
        (neighbours per node of a graph rebuilt from coarse samples, from ``graph_options``).
    out : run folder (:mod:`rsmi_nn.rundir`); None keeps nothing on disk.
    seed : level ``l`` uses ``level_seed(seed, l)``.
    overwrite : discard an existing run in ``out`` whose configuration differs.
    callback : called as ``callback(level, record)`` after each level is saved.

    Returns
    -------
    FlowResult; ``flow.json`` records hold ``level, num_nodes, num_blocks, num_edges (undirected),
    correlation_length`` (this level's input, in its own hops), ``correlation_length_level0``,
    ``correlation_fit``, ``correlation_length_out`` (the coarse samples on the next graph),
    ``locality``, ``locality_chance``, ``mi_mean, mi_per_block, mi_stderr_per_block, mi_ceiling, bound, hidden``.
    """
    setting, x = _setting(x, graph, options, graph_options, overrides, seed, device, progress)
    first = _first_level(x, graph, setting)
    result = FlowResult(records=[], out=Path(out) if out is not None else None)
    if out is not None:
        _on_writer("preparing the run directory", rundir.prepare, out, _identity(setting, x), overwrite=overwrite)
    cur_x, cur_graph = x, graph
    cover = torch.arange(x.shape[1])  # this level's node of every level-0 unit (filter_inputs="units")
    for level in range(setting.options.levels):
        planned = first if level == 0 else _plan(level, cur_graph, setting, cur_x)
        if isinstance(planned, str):
            result.stopped = planned
            log.info("flow stops: %s", planned)
            break
        blocks, regions = planned
        saved = _saved_level(out, level, blocks)
        t0 = time.time()
        if saved is None:
            if out is not None:  # later levels were computed from this one: they go too
                _on_writer("discarding later levels", rundir.discard_levels, out, level)
            res, coarse, saved_regions = _step(level, x, cur_x, regions, cover, setting)
            seconds_step = time.time() - t0
        else:
            res, (record, coarse) = None, saved
            log.info("level %d: loaded from %s", level, rundir.level_dir(out, level))
        next_x, next_graph, node_blocks = _next_level(level, cur_graph, coarse, blocks, setting)
        if saved is None:
            record = _record(level, cur_x, cur_graph, regions, blocks, res, next_x, next_graph, node_blocks, setting)
            if out is not None:
                _on_writer(f"writing level {level}", rundir.write_level, rundir.level_dir(out, level),
                           graph=cur_graph, regions=saved_regions, result=res, coarse=coarse, record=record,
                           timing={"seconds_coarse_grain": seconds_step, "seconds_level": time.time() - t0})
            log.info("level %d: %d nodes, %d blocks, ξ = %.3f hops, locality %.3f, MI mean %.4f nats", level,
                     record["num_nodes"], record["num_blocks"], record["correlation_length"], record["locality"],
                     record["mi_mean"])
        result.records.append(record)
        result.graphs.append(cur_graph)
        result.blocks.append(blocks)
        result.results.append(res)
        if out is not None:
            _on_writer("writing flow.json", rundir.write_flow, out, result.records)
        if callback is not None:
            callback(level, record)
        cover = cover_next(cover, blocks.long(), node_blocks)
        cur_x, cur_graph = next_x, next_graph
    if out is not None:  # the folder holds exactly the levels of this flow (fewer may have been asked)
        _on_writer("discarding later levels", rundir.discard_levels, out, len(result.records))
        if result.records:
            _on_writer("writing flow.json", rundir.write_flow, out, result.records)
    result.samples = cur_x
    return result


def _step(level: int, x0: torch.Tensor, x: torch.Tensor, regions, cover: torch.Tensor, setting: _Setting):
    """The level's RSMI step: ``(result, coarse samples, regions to save)``; a level >= 1 reads the level-0 units
    its blocks cover when ``filter_inputs="units"`` (:mod:`rsmi_nn.unit_inputs`)."""
    step = dict(seed=level_seed(setting.seed, level), device=setting.device, progress=setting.progress,
                allow_constant=level > 0)
    if level == 0 or setting.options.filter_inputs != UNIT_INPUTS:
        res = coarse_grain(x, regions, _step_options(setting, level), **step)
        return res, res.transform(x), regions
    both, step_regions, saved = step_inputs(x0, x, regions, cover)
    res = unit_result(coarse_grain(both, step_regions, _step_options(setting, level), **step), x0.shape[1])
    del both
    return res, res.transform(x0), saved


def _step_options(setting: _Setting, level: int):
    """The level's step options. ``binarize="auto"`` gives two-valued units a binary H (the block spin) on a lattice
    only (planted hierarchies of ±1 units: 1 of 6 met issue 15's targets with a binary H, 6 of 6 with a real one).
    ``init="auto"`` starts a linear filter of a level >= 1 that reads coarse variables (not on a lattice) at its
    block's principal component: the variables carry no nuisance, their common factor within a block is the planted
    latent, and their correlations with each other exceed those with the environment, which the canonical start
    fits (issue 15's third construction at weak coupling from 3 000 rows: level-1 variables 0.25 -> 0.96 of the
    reachable |corr|; docs/planted-hierarchy.md, "Within the noise")."""
    opts = setting.options.step_options()
    if setting.lattice_block is not None:
        return opts
    if opts.binarize == "auto":
        opts = opts.replace(binarize=None)
    variables = setting.options.filter_inputs != UNIT_INPUTS
    if level > 0 and variables and opts.init == "auto" and opts.start == "cca":
        opts = opts.replace(init="pca")
    return opts


def _on_writer(what: str, write, *args, **kwargs) -> None:
    """``write(*args, **kwargs)`` on the rank that writes files (rank 0; the only process); a failure fails every rank."""
    with agreed(what):
        if is_writer():
            write(*args, **kwargs)


def _saved_level(out, level: int, blocks: torch.Tensor):
    """``(record, coarse samples)`` of a finished level in ``out`` read by rank 0 and sent to every rank, or None;
    None too (logged) when its blocks are not the ``blocks`` planned now (a folder written by an earlier version of
    the partition): the level is recomputed rather than read against another partition."""
    if out is None:
        return None
    path = rundir.level_dir(out, level)
    with agreed(f"reading level {level}"):
        saved = rundir.read_level(path) if is_writer() else None
        if saved is not None and not rundir.same_blocks(path, blocks):
            log.warning("level %d in %s was partitioned otherwise than this version plans it; it is recomputed",
                        level, out)
            saved = None
    return broadcast_object(saved)


def check_flow(x, graph, options: FlowOptions | None = None, *, graph_options: GraphOptions | None = None,
               seed: int = 0, **overrides) -> None:
    """Raise the error :func:`run_flow` would raise before its first level, training and writing nothing."""
    setting, x = _setting(x, graph, options, graph_options, overrides, seed, "cpu", False)
    _first_level(x, graph, setting)


def _first_level(x: torch.Tensor, graph, setting: _Setting):
    """Level 0's ``(blocks, regions)``, checked against the samples before anything is written."""
    planned = _plan(0, graph, setting, x)
    if isinstance(planned, str):
        raise ValueError(f"the flow cannot start: {planned}; use a smaller block_size")
    check_step(x.shape[0], x.shape[1], planned[1], setting.options.step_options())
    return planned


def _setting(x, graph, options, graph_options, overrides, seed, device, progress) -> tuple[_Setting, torch.Tensor]:
    """Check the flow's inputs once, before anything is trained or written."""
    from graphs import ActivationGraph
    from graphs.graph import check_affinities

    if options is not None and not isinstance(options, FlowOptions):
        raise TypeError(f"options must be a rsmi_nn.options.FlowOptions, got {type(options).__name__}; "
                        "pass levels, block_size, ... as keywords")
    flow_changes, graph_changes = split_overrides(overrides, FlowOptions, GraphOptions)
    if set(graph_changes) - {"k"}:
        raise ValueError(f"run_flow uses only k of the graph options (graphs rebuilt from coarse samples are |corr| "
                         f"top-k graphs); {sorted(set(graph_changes) - {'k'})} belong to build_graph's level-0 graph")
    options = (options or FlowOptions()).replace(**flow_changes)
    graph_options = (graph_options or GraphOptions()).replace(**graph_changes)
    if options.min_nodes is None:
        options = options.replace(min_nodes=options.block_size)
    seed = check_positive_int(seed, name="seed", minimum=0)
    if not isinstance(graph, ActivationGraph):
        raise ValueError(f"graph must be a graphs.ActivationGraph, got {type(graph).__name__}")
    check_affinities(graph)
    x = check_samples(x, name="x", min_samples=4)
    if x.shape[1] != graph.num_nodes:
        raise ValueError(f"x has {x.shape[1]} units but the graph has {graph.num_nodes} nodes; "
                         "build the graph from the same units as x")
    if options.block_size > graph.num_nodes:
        raise ValueError(f"block_size={options.block_size} exceeds the graph's {graph.num_nodes} nodes; "
                         f"choose block_size <= {graph.num_nodes}")
    lattice = _lattice_side(graph) if options.rebuild in ("auto", "quotient") else None
    b = None
    if lattice is not None:
        b = math.isqrt(options.block_size)
        if b * b != options.block_size or lattice[0] % b:
            raise ValueError(f"block_size={options.block_size} on an L={lattice[0]} lattice needs b = sqrt(block_size) "
                             "an integer dividing L; use e.g. block_size=4 (2×2) or pass rebuild='samples'")
    return _Setting(options, graph_options.k, graph, b, seed, device, progress), x


def _identity(setting: _Setting, x: torch.Tensor) -> dict:
    """What a resumed flow must share with the run on disk (``flow_config.json``)."""
    options = setting.options.to_dict()
    options.pop("levels")  # more levels may be asked of a finished flow
    return {"options": options, "k": setting.k, "seed": setting.seed, "n_samples": int(x.shape[0]),
            "n_units": int(x.shape[1]), "data": rundir.fingerprint(x), "graph": rundir.graph_fingerprint(setting.graph0)}


def _plan(level: int, graph, setting: _Setting, x: torch.Tensor | None = None):
    """The level's ``(blocks, regions)``, or the reason (str) why the flow stops here. ``x`` : the level's samples
    (a level >= 1 graph rebuilt from them is partitioned on loading affinities when ``coarse_partition`` says, a
    group closed off by a gap beyond the affinities' standard errors kept whole: with ``"loading"`` at any natural gap
    (``NATURAL_RATIO``) if it fills half a block, else at a decisive one (``DECISIVE_GAP``); with ``"loading-gaps"`` at
    any natural gap. Level 0's partition into blocks of at most ``MAX_SWAP_BLOCK_SIZE`` is then refined by Pareto
    swaps of units and of blocks' halves, dissolutions, and departures past ``block_size``,
    :func:`graphs.swaps.pareto_swaps`)."""
    from graphs import lattice_blocks, partition
    from graphs.loadings import loading_graph
    from graphs.partitioning import DECISIVE_GAP, NATURAL_RATIO
    from graphs.swaps import MAX_SWAP_BLOCK_SIZE, pareto_swaps

    opts, s = setting.options, level_seed(setting.seed, level)
    if graph.num_nodes < max(opts.min_nodes, opts.block_size, 3):
        return (f"level {level} has {graph.num_nodes} nodes, fewer than min_nodes={opts.min_nodes}, "
                f"block_size={opts.block_size} or 3")
    lat = _lattice_side(graph) if setting.lattice_block is not None else None
    if lat is not None:
        b = setting.lattice_block
        if lat[0] % b or lat[0] // b < 2:
            return f"level {level}: an L={lat[0]} lattice cannot be cut into {b}×{b} blocks"
        blocks = lattice_blocks(lat[0], b)
    else:
        loading = level > 0 and opts.coarse_partition != "corr" and "metric" in graph.metadata
        g, se = loading_graph(x, graph.names, fallback=graph, with_stderr=True) if loading else (graph, None)
        gap, half = (NATURAL_RATIO, None) if opts.coarse_partition == "loading-gaps" else (DECISIVE_GAP, NATURAL_RATIO)
        blocks = partition(g, opts.block_size, seed=s, edge_stderr=se, closing_ratio=gap, half_block_ratio=half)
        if level == 0 and x is not None and opts.block_size <= MAX_SWAP_BLOCK_SIZE:
            blocks = pareto_swaps(x, blocks, graph, block_size=opts.block_size)
    if int(blocks.max()) < 1:
        return f"level {level}: its {graph.num_nodes} nodes form one block (block_size={opts.block_size})"
    regions = level_regions(graph, blocks, opts, s, narrow=lat is None)
    if level > 0 and regions.empty_environment.numel():
        return (f"level {level}: {regions.empty_environment.numel()} block(s) have an empty environment "
                f"on a graph of {graph.num_nodes} nodes")
    return blocks, regions


def _rebuilt(x: torch.Tensor, setting: _Setting):
    from graphs import build_graph

    return build_graph(x, k=min(setting.k, x.shape[1] - 1), device=setting.device)


def _next_level(level: int, graph, coarse: torch.Tensor, blocks, setting: _Setting):
    """The next level's samples, graph, and the block each of its nodes came from.

    A lattice flow with one component per block goes to the quotient lattice; ``rebuild="quotient"``
    joins blocks that touch; otherwise the graph is rebuilt from the coarse samples (top-``k`` |corr|,
    its metadata then names the ``metric``). Coarse units the rebuilt graph leaves out (constant ones)
    are dropped from the samples too.
    """
    from graphs import lattice_graph

    opts = setting.options
    lat = _lattice_side(graph) if setting.lattice_block is not None else None
    if lat is not None and opts.hidden == 1:
        next_graph = lattice_graph(lat[0] // setting.lattice_block, periodic=lat[1])
    elif opts.hidden == 1 and opts.rebuild == "quotient":
        next_graph = graph.quotient(blocks)
    else:
        next_graph = _rebuilt(coarse, setting)
    node_blocks = torch.arange(coarse.shape[1]) // opts.hidden
    kept = next_graph.metadata.get("unit_index")
    if kept is not None and len(kept) != coarse.shape[1]:
        log.warning("level %d: %d constant coarse unit(s) left out of the next level", level,
                    coarse.shape[1] - len(kept))
        kept = torch.as_tensor(kept)
        return coarse[:, kept], next_graph, node_blocks[kept]
    return coarse, next_graph, node_blocks


def _record(level, x, graph, regions, blocks, res, next_x, next_graph, node_blocks, setting: _Setting) -> dict:
    """The level's ``flow.json`` record: sizes, correlation length, locality and MI."""
    s = level_seed(setting.seed, level)
    xi = correlation_length(x, graph, seed=s)
    xi_out = correlation_length(next_x, next_graph, seed=s) if next_graph.num_edges else None
    if next_graph.num_edges and "metric" in next_graph.metadata:  # already the coarse samples' co-occurrence graph
        corr_graph = next_graph
    else:
        corr_graph = _rebuilt(next_x, setting)
    loc = locality_preservation(corr_graph, blocks, graph, node_blocks=node_blocks)
    if setting.lattice_block is not None:
        scale, method = float(setting.lattice_block**level), "b^level"
    else:
        scale, method = math.sqrt(setting.graph0.num_nodes / graph.num_nodes), "sqrt(num_nodes_0 / num_nodes)"
    mi, vis, env = res.mi.double(), regions.visible_mask.sum(1), regions.environment_mask.sum(1)
    return {
        "level": level, **graph_sizes(graph), "num_blocks": regions.num_blocks,
        "block_sizes": {"min": int(vis.min()), "max": int(vis.max())},
        "environment_sizes": {"min": int(env.min()), "max": int(env.max())},
        "correlation_length": xi["xi"], "correlation_length_level0": xi["xi"] * scale,
        "correlation_length_level0_method": method,
        "correlation_fit": {key: xi[key] for key in ("fit_range", "r2", "status", "amplitude", "noise_floor")},
        "correlation_curve": {"r": xi["r"], "c": xi["c"]},
        "correlation_length_out": None if xi_out is None else xi_out["xi"],
        "locality": loc["locality"], "locality_chance": loc["chance"], "locality_edges": loc["n_edges"],
        "mi_mean": float(mi.mean()), "mi_per_block": [float(v) for v in mi],
        "mi_stderr_per_block": [float(v) for v in res.mi_stderr],
        "mi_ceiling": res.mi_ceiling, "bound": res.bound, "hidden": setting.options.hidden,
        "filter_inputs": UNIT_INPUTS if level > 0 and setting.options.filter_inputs == UNIT_INPUTS else "variables",
        "block_size": setting.options.block_size, "binarize": res.binarize, "seed": s,
        "steps_run": res.info["steps_run"], "collapsed_blocks": res.info["collapsed_blocks"],
        "next_num_nodes": next_graph.num_nodes,
    }
