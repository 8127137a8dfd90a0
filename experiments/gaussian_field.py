"""Gaussian field on an irregular graph: RSMI against each block's exact CCA optimum.

The field is a Gaussian Markov random field on a random geometric graph (``n_nodes`` points
in the unit square, edges between points closer than ``radius``): precision
``Q = L_w + m² I`` (the weighted graph Laplacian plus a mass term), covariance ``Σ = Q⁻¹``.
Correlations decay over ~1/m hops. Blocks come from ``graphs.partition``, regions from
``graphs.make_regions``; for every block the best linear scalar coarse variable reaches
``estimators.cca_mi(Σ, V_j, E_j)``, the value RSMI must approach. Two figures are reported per
block: the exact MI of the *learnt filter* (``filter_mi``: ``I(W_j·V_j; E_j)`` from Σ, no sampling
noise: how good the filter is) and RSMI's held-out neural estimate with its standard error (what a
user sees; its noise is set by the number of test rows).

Run: ``python -m experiments.gaussian_field [--out DIR] [--quick]`` → ``gaussian_field.json``
and ``gaussian_field.png`` (learned MI against the optimum, per block).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import time
from pathlib import Path

import numpy as np
import torch

from estimators.validation import check_positive_int
from experiments.fields import field_covariance, gaussian_field_on
from graphs.atomic import atomic_write, atomic_write_bytes

__all__ = ["block_optima", "filter_mi", "gaussian_field", "random_geometric_graph", "run"]

log = logging.getLogger(__name__)


def gaussian_field(n_nodes: int = 200, n_samples: int = 10000, seed: int = 0, *, radius: float | None = None,
                   mass: float = 0.3):
    """Sample a GMRF on a random geometric graph (:func:`random_geometric_graph` + :func:`gaussian_field_on`).

    Parameters
    ----------
    n_nodes : number of nodes (points in the unit square).
    n_samples : number of field samples.
    seed : seeds the points, the couplings and the samples (one stream, in that order).
    radius : connection radius (default ``sqrt(8 / (π n_nodes))``, mean degree ≈ 8).
    mass : ``m`` in ``Q = L + m² I``; smaller = longer correlations.

    Returns
    -------
    graph : ActivationGraph (edge weight = coupling), cov : ndarray [U, U] float64,
    x : Tensor [n_samples, U] float32.
    """
    n_nodes = check_positive_int(n_nodes, name="n_nodes", minimum=4)
    n_samples = check_positive_int(n_samples, name="n_samples", minimum=2)
    rng = np.random.default_rng(seed)
    graph, couplings = random_geometric_graph(n_nodes, rng, radius=radius,
                                              metadata={"kind": "gaussian_field", "seed": seed, "mass": mass})
    cov = field_covariance(graph, mass=mass, edge_weight=couplings)
    x = gaussian_field_on(graph, n_samples, mass=mass, seed=rng, edge_weight=couplings, method="dense")
    return graph, cov, x


def random_geometric_graph(n_nodes: int, seed=0, *, radius: float | None = None, metadata: dict | None = None):
    """``n_nodes`` uniform points in the unit square, linked when closer than ``radius``, random couplings.

    The graph is made connected by linking each component to its nearest outside point; couplings are
    uniform in [0.5, 1.5] (inhomogeneous).

    Parameters
    ----------
    n_nodes : number of nodes.
    seed : int or numpy.random.Generator (drawn from in place: points, then couplings).
    radius : connection radius (default ``sqrt(8 / (π n_nodes))``, mean degree ≈ 8).
    metadata : extra entries for the graph's metadata (``"radius"`` is added).

    Returns
    -------
    graph : ActivationGraph (its edge weights are float32),
    couplings : ndarray [graph.num_edges] float64, the exact couplings aligned with ``graph.edge_index``.
    """
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components
    from scipy.spatial import cKDTree

    from graphs import ActivationGraph

    n_nodes = check_positive_int(n_nodes, name="n_nodes", minimum=2)
    rng = np.random.default_rng(seed)
    pts = rng.random((n_nodes, 2))
    radius = math.sqrt(8.0 / (math.pi * n_nodes)) if radius is None else float(radius)
    tree = cKDTree(pts)
    pairs = [tree.query_pairs(radius, output_type="ndarray")]
    while True:  # connect the components
        e = np.concatenate(pairs)
        adj = coo_matrix((np.ones(len(e)), (e[:, 0], e[:, 1])), shape=(n_nodes, n_nodes))
        n_comp, lab = connected_components(adj, directed=False)
        if n_comp == 1:
            break
        inside = np.nonzero(lab == lab[0])[0]
        outside = np.nonzero(lab != lab[0])[0]
        d = np.linalg.norm(pts[inside][:, None] - pts[outside][None], axis=-1)
        i, j = np.unravel_index(d.argmin(), d.shape)
        pairs.append(np.array([[inside[i], outside[j]]]))
    e = np.concatenate(pairs)
    w = rng.uniform(0.5, 1.5, size=len(e))
    edge_index = torch.from_numpy(np.ascontiguousarray(e.T)).long()
    graph = ActivationGraph([f"node:{i}" for i in range(n_nodes)], edge_index, torch.from_numpy(w).float(),
                            metadata={**(metadata or {}), "radius": radius})
    # the graph keeps both directions sorted by (source, target) key; put the float64 couplings in that order
    key = np.concatenate([e[:, 0] * n_nodes + e[:, 1], e[:, 1] * n_nodes + e[:, 0]])
    order = np.argsort(key, kind="stable")
    couplings = np.concatenate([w, w])[order]
    src, dst = graph.edge_index.numpy()
    if not np.array_equal(key[order], src * n_nodes + dst):
        raise RuntimeError("random_geometric_graph: edge list and graph.edge_index disagree (duplicate pairs?)")
    return graph, couplings


def block_optima(cov: np.ndarray, regions) -> np.ndarray:
    """``cca_mi(cov, V_j, E_j)`` for every block (nats, float64 ``[J]``)."""
    from estimators import cca_mi

    out = np.empty(regions.num_blocks)
    for j in range(regions.num_blocks):
        v = regions.visible[j][regions.visible_mask[j]].tolist()
        e = regions.environment[j][regions.environment_mask[j]].tolist()
        out[j] = cca_mi(cov, v, e)
    return out


def filter_mi(cov: np.ndarray, regions, result) -> np.ndarray:
    """Exact ``I(H_j; E_j)`` of every block's learnt linear filter, ``H_j = W_jᵀ (V_j / σ_V)`` (float64 ``[J]``).

    ``result`` is a :class:`rsmi_nn.CoarseGrainResult` fit without binarisation; its filters act on
    standardised units, so the weights are divided by the fitted ``std`` before meeting ``cov``.
    """
    from estimators import gaussian_mi

    if result.binarize is not None or result.filter != "linear":
        raise ValueError("filter_mi needs a linear, non-binarised filter (the Gaussian optimum is linear)")
    std = result.std.double().numpy()
    out = np.empty(regions.num_blocks)
    for j in range(regions.num_blocks):
        v = regions.visible[j][regions.visible_mask[j]].numpy()
        e = regions.environment[j][regions.environment_mask[j]].numpy()
        w = result.filters[j, : len(v)].double().numpy() / std[v, None]  # [|V|, h]
        h = w.shape[1]
        joint = np.empty((h + len(e), h + len(e)))
        joint[:h, :h] = w.T @ cov[np.ix_(v, v)] @ w
        joint[:h, h:] = w.T @ cov[np.ix_(v, e)]
        joint[h:, :h] = joint[:h, h:].T
        joint[h:, h:] = cov[np.ix_(e, e)]
        out[j] = gaussian_mi(joint, range(h), range(h, h + len(e)))
    return out


def run(out: str | os.PathLike = "runs/gaussian_field", *, quick: bool = False, seed: int = 0,
        progress: bool = True) -> dict:
    """The study: learn every block's filter and compare its held-out MI with the CCA optimum."""
    from graphs import make_regions, partition
    from rsmi_nn import coarse_grain

    out = Path(out)
    n_nodes, n_samples = (120, 6000) if quick else (300, 20000)
    t0 = time.time()
    graph, cov, x = gaussian_field(n_nodes, n_samples, seed=seed)
    blocks = partition(graph, 4, seed=seed)
    regions = make_regions(graph, blocks, buffer=1, env=1, seed=seed)
    optimum = block_optima(cov, regions)
    t1 = time.time()
    res = coarse_grain(x, regions, seed=seed, progress=progress)
    t2 = time.time()
    learned = res.mi.double().numpy()
    stderr = res.mi_stderr.double().numpy()
    exact = filter_mi(cov, regions, res)
    ratio, filter_ratio = learned / optimum, exact / optimum
    record = {
        "n_nodes": n_nodes, "n_samples": n_samples, "n_test": res.info["n_test"], "num_blocks": regions.num_blocks,
        "seed": seed, "mi_optimum": optimum.tolist(), "mi_learned": learned.tolist(), "mi_stderr": stderr.tolist(),
        "mi_filter_exact": exact.tolist(), "ratio": ratio.tolist(), "filter_ratio": filter_ratio.tolist(),
        "ratio_mean": float(ratio.mean()), "ratio_min": float(ratio.min()), "ratio_median": float(np.median(ratio)),
        "filter_ratio_mean": float(filter_ratio.mean()), "filter_ratio_min": float(filter_ratio.min()),
        "stderr_over_optimum_mean": float((stderr / optimum).mean()),
        "z_mean": float(((learned - optimum) / stderr).mean()), "mi_ceiling": res.mi_ceiling,
        "steps_run": res.info["steps_run"], "seconds_setup": t1 - t0, "seconds_training": t2 - t1,
    }
    atomic_write_bytes(out / "gaussian_field.json", json.dumps(record, indent=2).encode())
    _plot(out / "gaussian_field.png", optimum, learned, stderr, exact)
    return record


def _plot(path: Path, optimum: np.ndarray, learned: np.ndarray, stderr: np.ndarray, exact: np.ndarray) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
    top = float(max(optimum.max(), learned.max())) * 1.05
    a.plot([0, top], [0, top], "k--", lw=1, label="optimum")
    a.errorbar(optimum, learned, yerr=stderr, fmt="o", ms=3, lw=0.8, label="held-out estimate ± s.e.")
    a.scatter(optimum, exact, s=10, marker="x", color="C3", zorder=3, label="exact MI of the learnt filter")
    a.set_xlabel("CCA optimum I* (nats)")
    a.set_ylabel("I(H;E) (nats)")
    a.set_title("RSMI blocks on a Gaussian field")
    a.legend(fontsize=8)
    bins = np.linspace(min(0.8, float((learned / optimum).min())), max(1.2, float((learned / optimum).max())), 41)
    b.hist(learned / optimum, bins=bins, alpha=0.7, label="held-out estimate / optimum")
    b.hist(exact / optimum, bins=bins, alpha=0.7, color="C3", label="learnt filter (exact) / optimum")
    b.set_xlabel("ratio to the optimum")
    b.set_ylabel("blocks")
    b.legend(fontsize=8)
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=120))
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/gaussian_field", help="output folder")
    parser.add_argument("--quick", action="store_true", help="a smaller field (about a minute)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    rec = run(args.out, quick=args.quick, seed=args.seed, progress=not args.quiet)
    print(f"{rec['num_blocks']} blocks: learnt filter (exact MI) / optimum mean {rec['filter_ratio_mean']:.4f}, "
          f"min {rec['filter_ratio_min']:.4f}; held-out estimate / optimum mean {rec['ratio_mean']:.3f}, median "
          f"{rec['ratio_median']:.3f}, min {rec['ratio_min']:.3f} (s.e. {rec['stderr_over_optimum_mean']:.1%} of "
          f"the optimum); training {rec['seconds_training']:.1f} s "
          f"-> {Path(args.out) / 'gaussian_field.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
