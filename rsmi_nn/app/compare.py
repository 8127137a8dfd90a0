"""Comparison of runs: variable matching, Gromov–Wasserstein between level graphs, flow invariants.

``compare_runs(["runs/a", "runs/b"], out="cmp")`` (``rsmi compare RUN_A RUN_B --out DIR``) returns,
and writes as ``DIR/compare.json`` (with ``DIR/compare.html`` and ``DIR/couplings/``)::

    {"runs": [label, ...], "run_info": {label: {...}}, "pairs": [{"a", "b", "samples": {rule, note}}],
     "gw": {the recipe}, "options": {...},
     "levels": [{"level": l,
                 "matching": {"mean_abs_corr", "fraction_above_0.9", ...} | {... null, "defined": false},
                 "gw_distance": d,
                 "invariants": {label: {"xi_ratio", "locality", "mi_mean", "participation_ratio", ...}},
                 "spread": {invariant: {"mean", "std", "relative_spread", "within_5pct"}},
                 "pairs": [{"a", "b", "matching", "gw_distance", "gw": {...}}]}]}

With two runs, a level's ``matching`` and ``gw_distance`` are those of the pair; with more, their
means over all pairs (each pair under ``pairs``). Matching follows the rule of
:mod:`rsmi_nn.app.compare_samples`; GW the recipe of :mod:`rsmi_nn.app.compare_gw`; invariants
:mod:`rsmi_nn.app.compare_invariants`. Two runs of the same configuration and seed give
``mean_abs_corr`` 1.0 and ``gw_distance`` 0 at every level.
"""

from __future__ import annotations

import itertools
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from rsmi_nn.app.compare_gw import block_coupling, distance_matrix, gromov_wasserstein
from rsmi_nn.app.compare_invariants import SCALAR_INVARIANTS, level_invariants, relative_spread
from rsmi_nn.app.compare_matching import match_variables
from rsmi_nn.app.compare_options import CompareOptions
from rsmi_nn.app.compare_samples import shared_coarse_samples

__all__ = ["CompareOptions", "compare_runs"]

log = logging.getLogger(__name__)


@dataclass
class _Pair:
    a: int
    b: int
    shared: object  # SharedSamples


def compare_runs(runs, out: str | Path | None = None, *, samples=None, options: CompareOptions | None = None,
                 seed: int = 0, labels=None, **overrides) -> dict:
    """Compare two or more finished runs level by level; write ``out/compare.json`` and ``compare.html``.

    Parameters
    ----------
    runs : run directories (or :class:`rsmi_nn.run.Run` objects), at least two.
    out : folder for ``compare.json``, ``compare.html`` and ``couplings/level_NNN.npz`` (None: write nothing).
    samples : level-0 activations ``[N, U_0]`` (or a file) to match runs of the same units on
        (default: the rule of :mod:`rsmi_nn.app.compare_samples`).
    options, **overrides : :class:`CompareOptions` (max_gw_nodes, gw_solver, gw_epsilon, n_sources, threshold).
    seed : seed of the GW node subsample and of the ξ source blocks.
    labels : names of the runs in the result (default: the paths as given, made unique).

    Returns
    -------
    dict, the content of ``compare.json`` (see the module docstring).
    """
    from rsmi_nn.run import Run, load_run

    opts = (options or CompareOptions()).replace(**overrides)
    runs = list(runs) if not isinstance(runs, (str, Path)) else [runs]
    if len(runs) < 2:
        raise ValueError(f"compare needs at least two runs, got {len(runs)}; e.g. rsmi compare runs/a runs/b --out cmp")
    loaded = [r if isinstance(r, Run) else load_run(r) for r in runs]
    labels = _labels(runs if labels is None else labels, len(loaded))
    pairs = [_Pair(i, j, shared_coarse_samples(loaded[i], loaded[j], samples))
             for i, j in itertools.combinations(range(len(loaded)), 2)]
    n_levels = max(len(r.levels) for r in loaded)
    levels, couplings = [], {}
    for level in range(n_levels):
        entry, level_couplings = _level(level, loaded, labels, pairs, opts, seed)
        levels.append(entry)
        couplings.update(level_couplings)
    result = {
        "runs": labels,
        "run_info": {lab: _run_info(r) for lab, r in zip(labels, loaded)},
        "pairs": [{"a": labels[p.a], "b": labels[p.b], "samples": {"rule": p.shared.rule, "note": p.shared.note,
                                                                    "n_samples": p.shared.n_samples}}
                  for p in pairs],
        "gw": {"matrices": "hop distances of levels/NNN/graph, unreachable = max finite + 1, divided by their max",
               "weights": "uniform", "loss": "square_loss", "solver": opts.gw_solver,
               "epsilon": opts.gw_epsilon if opts.gw_solver == "entropic" else None,
               "max_nodes": opts.max_gw_nodes, "subsample_seed": seed},
        "options": {**opts.to_dict(), "seed": seed},
        "levels": levels,
    }
    if out is not None:
        _write(Path(out), result, couplings, loaded)
    return result


def _labels(names, n: int) -> list[str]:
    out: list[str] = []
    for name in names:
        label = str(getattr(name, "path", name))
        base, k = label, 2
        while label in out:
            label, k = f"{base} ({k})", k + 1
        out.append(label)
    if len(out) != n:
        raise ValueError(f"{len(out)} labels for {n} runs; give one label per run")
    return out


def _level(level: int, runs, labels, pairs, opts: CompareOptions, seed: int) -> tuple[dict, dict]:
    """One entry of ``levels``: invariants per run, matching and GW per pair, spreads."""
    invariants = {lab: level_invariants(r, level, n_sources=opts.n_sources, seed=seed)
                  for lab, r in zip(labels, runs) if level < len(r.levels)}
    matrices = {i: distance_matrix(r.levels[level].graph, max_nodes=opts.max_gw_nodes, seed=seed)
                for i, r in enumerate(runs) if level < len(r.levels)}
    entries, couplings = [], {}
    for p in pairs:
        if p.a not in matrices or p.b not in matrices:
            continue
        matching = _matching(p.shared, level, opts.threshold)
        gw = gromov_wasserstein(matrices[p.a][0], matrices[p.b][0], solver=opts.gw_solver, epsilon=opts.gw_epsilon)
        couplings[(level, p.a, p.b)] = (gw["coupling"], matrices[p.a][1], matrices[p.b][1])
        entries.append({"a": labels[p.a], "b": labels[p.b], "matching": matching, "gw_distance": gw["distance"],
                        "gw": {k: gw[k] for k in ("solver", "n", "m")} | _soft_matching(gw["coupling"])})
    key = f"fraction_above_{opts.threshold:g}"
    return {
        "level": level,
        "matching": _mean_matching([e["matching"] for e in entries], key),
        "gw_distance": float(np.mean([e["gw_distance"] for e in entries])) if entries else None,
        "invariants": invariants,
        "spread": {name: relative_spread([inv.get(name) for inv in invariants.values()]) for name in SCALAR_INVARIANTS},
        "pairs": entries,
    }, couplings


def _matching(shared, level: int, threshold: float) -> dict:
    if shared.rule is None or level >= len(shared.coarse):
        reason = shared.note if shared.rule is None else "one of the runs has no such level"
        return {"mean_abs_corr": None, f"fraction_above_{threshold:g}": None, "defined": False, "reason": reason}
    a, b = shared.coarse[level]
    return {**match_variables(a, b, threshold=threshold), "defined": True, "rule": shared.rule}


def _mean_matching(matchings: list[dict], key: str) -> dict:
    """The pair's matching for two runs; for more, the means over the pairs where matching is defined."""
    if len(matchings) == 1:
        return matchings[0]
    defined = [m for m in matchings if m.get("defined")]
    if not defined:
        return {"mean_abs_corr": None, key: None, "defined": False, "reason": "matching is defined for no pair"}
    return {"mean_abs_corr": float(np.mean([m["mean_abs_corr"] for m in defined])),
            key: float(np.mean([m[key] for m in defined])), "defined": True, "pairs_defined": len(defined),
            "pairs": len(matchings)}


def _soft_matching(coupling: np.ndarray) -> dict:
    """How sharp the GW coupling is: the mean share of each row's mass on its best column (1 = a permutation)."""
    rows = coupling.sum(1)
    share = coupling.max(1) / np.where(rows > 0, rows, 1.0)
    return {"coupling_row_max_share": float(share.mean())}


def _run_info(run) -> dict:
    from rsmi_nn.app.compare_samples import run_store

    store = run_store(run)
    return {"path": str(run.path), "num_units": run.num_units, "levels": len(run.levels),
            "sizes": [lv.num_units for lv in run.levels] + [run.levels[-1].num_coarse],
            "seed": run.config.get("seed"), "n_samples": run.config.get("n_samples"),
            "store": None if store is None else str(store.path)}


def _write(out: Path, result: dict, couplings: dict, runs) -> None:
    """``compare.json``, ``couplings/level_NNN_A_B.npz`` (node and block couplings), ``compare.html``."""
    from graphs.atomic import atomic_write
    from rsmi_nn.app.compare_html import write_compare_html
    from rsmi_nn.app.files import write_json

    out.mkdir(parents=True, exist_ok=True)
    (out / "couplings").mkdir(exist_ok=True)
    for (level, a, b), (coupling, nodes_a, nodes_b) in couplings.items():
        blocks_a = runs[a].levels[level].blocks.numpy()[nodes_a]
        blocks_b = runs[b].levels[level].blocks.numpy()[nodes_b]
        arrays = {"coupling": coupling, "nodes_a": nodes_a, "nodes_b": nodes_b,
                  "block_coupling": block_coupling(coupling, blocks_a, blocks_b)}
        atomic_write(out / "couplings" / f"level_{level:03d}_{a}_{b}.npz", lambda tmp, arrays=arrays: _savez(tmp, arrays))
    write_compare_html(out / "compare.html", result, couplings)
    write_json(out / "compare.json", result)


def _savez(path: str, arrays: dict) -> None:
    with open(path, "wb") as fh:  # a file object: np.savez would append ".npz" to a path
        np.savez(fh, **arrays)
