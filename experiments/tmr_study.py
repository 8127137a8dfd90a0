"""The toy-model-of-renormalisation study: RSMI against variance-based baselines on planted hierarchies.

For every regime (a construction of :func:`experiments.tmr.sample_tmr`) the level-0 graph is built with
``graphs.build_graph`` and the flow run with ``rsmi_nn.run_flow`` (defaults, ``block_size`` = the
branching); the coarse variables of every level are scored on held-out rows against the planted truth
(:mod:`experiments.tmr_scores`), and so are block PCA, block mean, global PCA and a TopK SAE with the
same blocks / number of latents. One regime's level-0 blocks also get their relevance spectrum
(``coarse_grain(..., hidden="auto")``). The trained model family of :mod:`experiments.tmr_models` (MLPs of
four widths and a transformer, cached) is coarse-grained on its hidden layer and every method's coarse
variables are probed for every planted level. Writes ``tmr.json``, ``tmr_scores.png``, ``tmr_spectrum.png``
and ``tmr_models.png``.
"""

from __future__ import annotations

import argparse
import logging
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from graphs.atomic import atomic_write, atomic_write_json

__all__ = ["REGIMES", "main", "run", "run_models", "run_regime"]

log = logging.getLogger(__name__)

# name: (sample_tmr arguments, levels); block_size = branching; k = 8 neighbours (the setting)
REGIMES = {
    "nuisance": ({"branching": 4, "depth": 3, "group_size": 4, "nuisance": 2.0}, 2),
    "no-nuisance": ({"branching": 4, "depth": 3, "group_size": 4, "nuisance": 0.0}, 2),
    "weak-coupling": ({"branching": 4, "depth": 3, "group_size": 4, "nuisance": 2.0, "coupling": 0.6, "noise": 1.0}, 2),
    "branching-2": ({"branching": 2, "depth": 5, "group_size": 2, "nuisance": 2.0}, 3),
    "branching-3": ({"branching": 3, "depth": 4, "group_size": 3, "nuisance": 2.0, "nuisance_size": 3}, 3),
    "geometry-1d": ({"branching": 4, "depth": 3, "group_size": 4, "nuisance": 2.0, "geometry": "1d",
                     "noise_correlation": 1.0}, 2),
    "straddling-nuisance": ({"branching": 4, "depth": 3, "group_size": 4, "nuisance": 2.0, "nuisance_offset": 1}, 2),
}
QUICK = ("nuisance", "no-nuisance", "straddling-nuisance")
METHODS = ("rsmi", "block-pca", "block-mean", "pca", "sae")


def run_regime(name: str, *, n_train: int = 8000, n_test: int = 4000, k: int = 8, seed: int = 0,
               steps: int = 3000, sae_steps: int = 2000, progress: bool = False) -> dict:
    """Scores of every method at every level of one regime (held-out rows), and the flow's records."""
    from experiments.tmr import sample_tmr
    from experiments.tmr_scores import level_scores, score_method
    from graphs import build_graph
    from rsmi_nn import load_run, run_flow

    args, levels = REGIMES[name]
    sample = sample_tmr(n_train + n_test, seed=seed, **args)
    x_fit, x_test, rows = sample.x[:n_train], sample.x[n_train:], slice(n_train, None)
    graph = build_graph(x_fit, k=k)
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.time()
        flow = run_flow(x_fit, graph, levels=levels, block_size=args["branching"], steps=steps, out=tmp,
                        seed=seed, progress=progress)
        seconds = time.time() - t0
        run = load_run(tmp)
        coarse = run.encode(x_test)
        blocks = [run.unit_blocks(lv) for lv in range(len(run.levels))]
        hidden = [run.levels[lv].hidden for lv in range(len(run.levels))]
        scores = {"rsmi": [level_scores(coarse[lv], blocks[lv], hidden[lv], sample, lv, rows)
                           for lv in range(len(run.levels))]}
    for method in METHODS[1:]:
        scores[method] = score_method(method, x_fit, x_test, sample, rows, blocks, hidden, seed=seed,
                                      sae_steps=sae_steps)
    flow_rows = [{key: rec[key] for key in ("level", "num_nodes", "num_blocks", "num_edges", "environment_sizes",
                                            "mi_mean")} for rec in flow.records]
    return {"regime": name, "generator": sample.params, "levels_run": len(run.levels), "stopped": flow.stopped,
            "flow": flow_rows, "seconds_flow": seconds, "ceiling": [c.tolist() for c in sample.ceiling],
            "scores": scores}


def relevance_spectrum(name: str = "nuisance", *, n: int = 8000, k: int = 8, seed: int = 0, steps: int = 1500) -> dict:
    """``hidden="auto"`` on the level-0 blocks of a regime (buffer 0, environment = the 1-hop neighbours)."""
    from experiments.tmr import sample_tmr
    from graphs import build_graph, make_regions, partition
    from rsmi_nn import coarse_grain

    args, _ = REGIMES[name]
    sample = sample_tmr(n, seed=seed, **args)
    graph = build_graph(sample.x, k=k)
    regions = make_regions(graph, partition(graph, args["branching"], seed=seed), buffer=0, env=1, max_env=64)
    res = coarse_grain(sample.x, regions, hidden="auto", steps=steps, seed=seed)
    return {"regime": name, "spectrum": res.info["relevance_spectrum"].tolist(),
            "stderr": res.info["relevance_stderr"].tolist(), "ceiling": res.info["mi_ceiling_gaussian"].tolist(),
            "hidden_per_block": res.hidden_per_block.tolist()}


def run_models(*, seed: int = 0, steps: int = 3000, sae_steps: int = 2000, progress: bool = False,
               names: tuple[str, ...] | None = None) -> dict:
    """Every model of the family (:data:`experiments.tmr_models.FAMILY`): task accuracy and probe scores."""
    from experiments.tmr_models import FAMILY, load_model, model_recipe, score_model

    models = {}
    for name in FAMILY if names is None else names:
        recipe = model_recipe(name, seed=seed)
        model, stats = load_model(recipe)
        log.info("model %s: task accuracy %.3f (reference %.3f)", name, stats["val_accuracy"],
                 stats["reference_accuracy"])
        t0 = time.time()
        scores = score_model(model, recipe, steps=steps, sae_steps=sae_steps, seed=seed, progress=progress)
        models[name] = {"recipe": recipe, "stats": stats, "seconds_scores": time.time() - t0, **scores}
    return models


def run(out: str | os.PathLike = "experiments/results/tmr", *, quick: bool = False, seed: int = 0,
        progress: bool = False) -> dict:
    """Every regime (``quick``: three of them, shorter training), the spectrum, the model family (:func:`run_models`),
    JSON and plots under ``out``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    names = QUICK if quick else tuple(REGIMES)
    steps, sae_steps = (1500, 500) if quick else (3000, 2000)
    regimes = {}
    for name in names:
        log.info("regime %s", name)
        regimes[name] = run_regime(name, seed=seed, steps=steps, sae_steps=sae_steps, progress=progress)
    spectrum = relevance_spectrum(seed=seed, steps=steps)
    models = run_models(seed=seed, steps=steps, sae_steps=sae_steps, progress=progress)
    rec = {"quick": quick, "seed": seed, "regimes": regimes, "relevance_spectrum": spectrum, "table": _table(regimes),
           "models": models, "model_table": _model_table(models)}
    atomic_write_json(out / "tmr.json", rec, sort_keys=True)
    _plot_scores(out / "tmr_scores.png", regimes)
    _plot_spectrum(out / "tmr_spectrum.png", spectrum)
    _plot_models(out / "tmr_models.png", models)
    return rec


def _table(regimes: dict) -> list[dict]:
    """One row per (regime, level, method): ARI, mean and min |corr| / ceiling, fraction reading the latent."""
    rows = []
    for name, reg in regimes.items():
        for method, per_level in reg["scores"].items():
            for level, s in enumerate(per_level):
                rows.append({"regime": name, "level": level, "method": method, "ari": s["ari"],
                             "corr_mean": s["corr_mean"], "corr_min": s["corr_min"], "reads_latent": s["reads_latent"]})
    return rows


def _model_table(models: dict) -> list[dict]:
    """One row per (model, method, flow level): probe R² and best single-variable |corr| per planted level."""
    rows = []
    for name, m in models.items():
        for method, per_level in {"hidden": [m["hidden"]], **m["probe"]}.items():
            for level, s in enumerate(per_level):
                rows.append({"model": name, "task_accuracy": m["stats"]["val_accuracy"], "method": method,
                             "flow_level": None if method == "hidden" else level,
                             "num_latents": m["alive_units"] if method == "hidden" else m["num_latents"][level],
                             "r2": s["r2"], "best_corr": s["best_corr"], "variables_per_level": s["variables_per_level"],
                             "nuisance_r2": s["nuisance_r2"]})
    return rows


def _plot_models(path: Path, models: dict) -> None:
    """Probe R² against planted level: one panel per (flow level, method), one line per model."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    first = next(iter(models.values()))
    methods, levels = list(first["probe"]), max(len(m["num_latents"]) for m in models.values())
    fig, axes = plt.subplots(levels, len(methods), figsize=(2.9 * len(methods), 2.7 * levels), squeeze=False,
                             sharey=True)
    planted = range(len(first["input_ceiling"]))
    for row in range(levels):
        for ax, method in zip(axes[row], methods):
            ax.plot(planted, first["input_ceiling"], color="k", ls="--", lw=0.8, label="from x (exact)")
            for i, (name, m) in enumerate(models.items()):
                if row < len(m["probe"][method]):
                    ax.plot(planted, m["probe"][method][row]["r2"], marker="o", color=f"C{i}",
                            ls=":" if name == "transformer" else "-", label=f"{name} ({m['num_latents'][row]})")
            ax.set_title(f"{method}, flow level {row}", fontsize=8)
            ax.set_xticks(list(planted))
            ax.set_ylim(-0.05, 1.02)
            ax.set_xlabel("planted level")
        axes[row][0].set_ylabel("held-out probe R²")
    axes[0][-1].legend(fontsize=6)
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110))
    plt.close(fig)


def _plot_scores(path: Path, regimes: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(regimes), figsize=(3.6 * len(regimes), 3.4), squeeze=False)
    for ax, (name, reg) in zip(axes[0], regimes.items()):
        for method, per_level in reg["scores"].items():
            ax.plot(range(len(per_level)), [s["corr_mean"] for s in per_level], marker="o", label=method)
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("level")
        ax.set_ylim(-0.02, 1.05)
        ax.set_xticks(range(reg["levels_run"]))
    axes[0][0].set_ylabel("mean |corr| with planted latent / ceiling")
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110))
    plt.close(fig)


def _plot_spectrum(path: Path, spec: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    s, c = np.asarray(spec["spectrum"]), np.asarray(spec["ceiling"])
    fig, ax = plt.subplots(figsize=(4.5, 3.4))
    h = np.arange(1, s.shape[1] + 1)
    for j in range(s.shape[0]):
        ax.plot(h, s[j] / c[j], color="C0", alpha=0.4, marker=".")
    ax.axhline(1.0, color="k", lw=0.8, ls="--", label="Gaussian plug-in I(V;E)")
    ax.set_xticks(h)
    ax.set_xlabel("components h")
    ax.set_ylabel("held-out I(H;E) / I(V;E)")
    ax.set_title(f"relevance spectrum ({spec['regime']}, level 0)", fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110))
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="experiments/results/tmr", help="output folder")
    parser.add_argument("--quick", action="store_true", help="three regimes and the model family, shorter training")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    torch.manual_seed(args.seed)
    rec = run(args.out, quick=args.quick, seed=args.seed, progress=not args.quiet)
    for row in rec["table"]:
        ari = "  -  " if row["ari"] is None else f"{row['ari']:.3f}"
        print(f"{row['regime']:>20} L{row['level']} {row['method']:>10}  ARI {ari}  |corr|/ceiling mean "
              f"{row['corr_mean']:.3f} min {row['corr_min']:.3f}")
    for row in rec["model_table"]:
        level = "hidden" if row["flow_level"] is None else f"L{row['flow_level']}"
        print(f"{row['model']:>12} (task acc {row['task_accuracy']:.3f}) {row['method']:>10} {level:>6} "
              f"({row['num_latents']:>3} vars)  probe R2 per planted level "
              + " ".join(f"{v:.3f}" for v in row["r2"]))
    print(f"relevance spectrum: components per block {rec['relevance_spectrum']['hidden_per_block']} "
          f"-> {Path(args.out) / 'tmr.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
