"""Canonicity: are a flow's coarse variables the same from another seed, or from another half of the data?

``python -m experiments.canonicity [--quick] [--out DIR] [--source digits-mlp|minilm]``

One model source (default the digits MLP; ``--source minilm`` the default MiniLM flow, ~85 s per
run on an idle 2-core machine). Its activations over the inputs of the source's shipped config (its
``max_samples``: 1 437 digits, 200 MiniLM texts) are recorded once; the flow of that config is run

- with ``seeds`` different seeds on all inputs, and
- on two disjoint halves of the inputs (a seeded split), seed 0.

Per level, the coarse variables of every pair of seed runs, and of the two half runs, are matched
one-to-one by |corr| (:func:`rsmi_nn.app.compare_runs`: the seed runs share their samples; the half
runs are both encoded on all inputs). The same score is computed for the baselines at the same
number of latents (:mod:`rsmi_nn.baselines`): block PCA on each run's own blocks of that level,
global PCA and a TopK SAE, fitted with the same seeds (and on the same halves), encoded on all inputs.
Writes ``DIR/canonicity.json`` and ``DIR/canonicity.png`` and prints the table.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import logging
from pathlib import Path

import numpy as np
import torch

log = logging.getLogger(__name__)

METHODS = ("rsmi", "block-pca", "pca", "sae")
_CONFIGS = {"digits-mlp": "digits-mlp", "minilm": "default"}


def record_all(source_name: str, root: Path, *, max_inputs: int | None = None) -> dict[str, Path]:
    """Record the first ``max_inputs`` inputs (default all), and the two halves of a seeded split of them,
    into stores; returns their folders."""
    from rsmi_nn.app.sources import load_source

    src = load_source(source_name)
    if max_inputs is not None and max_inputs < len(src.inputs):
        src = dataclasses.replace(src, inputs=_take(src.inputs, torch.arange(max_inputs)))
    n = len(src.inputs)
    order = torch.randperm(n, generator=torch.Generator().manual_seed(12345))
    halves = [torch.sort(part).values for part in order.chunk(2)]
    stores = {}
    for name, idx in (("all", None), ("half0", halves[0]), ("half1", halves[1])):
        folder = root / "stores" / name
        stores[name] = folder
        if (folder / "manifest.json").is_file():
            continue
        part = src if idx is None else dataclasses.replace(src, inputs=_take(src.inputs, idx))
        part.record(folder, overwrite=True, progress=False, device="cpu")
    return stores


def _take(inputs, idx: torch.Tensor):
    return inputs[idx] if isinstance(inputs, torch.Tensor) else [inputs[i] for i in idx.tolist()]


def flow_run(store: Path, out: Path, config_name: str, seed: int, steps: int | None) -> Path:
    """The shipped config's graph and flow on an activation store (resumed when already there)."""
    from rsmi_nn.app.config import load_config
    from rsmi_nn.app.pipeline import run_pipeline

    cfg = load_config(config_name)
    cfg.update([("source.name", f"store:{store}", "canonicity"), ("source.options", {}, "canonicity"),
                ("source.max_samples", None, "canonicity"), ("run.seed", seed, "canonicity"),
                ("run.quiet", True, "canonicity"), ("run.device", "cpu", "canonicity")]
               + ([("flow.steps", steps, "canonicity")] if steps else []))
    return run_pipeline(cfg, out, report=False, progress=False)


def rsmi_scores(seed_runs: list[Path], half_runs: list[Path]) -> dict:
    """Matched |corr| per level between all pairs of seed runs, and between the two half runs."""
    from rsmi_nn.app.compare import compare_runs

    seeds = compare_runs(seed_runs)
    halves = compare_runs(half_runs)
    return {"seeds": [_pair_scores(lv) for lv in seeds["levels"]],
            "halves": [_pair_scores(lv) for lv in halves["levels"]],
            "seeds_gw": [lv["gw_distance"] for lv in seeds["levels"]],
            "halves_gw": [lv["gw_distance"] for lv in halves["levels"]],
            "halves_rule": halves["pairs"][0]["samples"]["rule"]}


def _pair_scores(level: dict) -> dict:
    values = [p["matching"]["mean_abs_corr"] for p in level["pairs"] if p["matching"].get("defined")]
    fractions = [p["matching"]["fraction_above_0.9"] for p in level["pairs"] if p["matching"].get("defined")]
    return _summary(values, fractions)


def _summary(values, fractions) -> dict:
    return {"mean_abs_corr": float(np.mean(values)), "min": float(np.min(values)), "max": float(np.max(values)),
            "fraction_above_0.9": float(np.mean(fractions)), "pairs": len(values)}


def baseline_scores(method: str, seed_runs, half_runs, seeds, stores, *, sae_steps: int) -> dict:
    """The same matched-|corr| scores for one baseline, fitted per seed run and per half, encoded on all inputs."""
    from graphs import ActivationStore
    from rsmi_nn import load_run
    from rsmi_nn.app.compare_matching import match_variables
    from rsmi_nn.baselines import fit_baseline

    store_all = ActivationStore.open(stores["all"])
    out = {"seeds": [], "halves": []}
    levels = min(len(load_run(r).levels) for r in [*seed_runs, *half_runs])
    for level in range(levels):
        for kind, runs, fit_stores, fit_seeds in (("seeds", seed_runs, [stores["all"]] * len(seeds), seeds),
                                                  ("halves", half_runs, [stores["half0"], stores["half1"]], [0, 0])):
            codes = []
            for run_dir, store, seed in zip(runs, fit_stores, fit_seeds):
                run = load_run(run_dir)
                names = run.unit_names
                x_fit = ActivationStore.open(store).to_tensor(units=names)
                enc = fit_baseline(method, x_fit, run.unit_blocks(level), run.levels[level].num_coarse, seed=seed,
                                   sae_steps=sae_steps)
                codes.append((names, enc.encode(store_all.to_tensor(units=names))))
            scores = [match_variables(a[1], b[1]) for a, b in itertools.combinations(codes, 2)]
            out[kind].append(_summary([s["mean_abs_corr"] for s in scores], [s["fraction_above_0.9"] for s in scores]))
    return out


def run(out: str | Path = "runs/canonicity", *, quick: bool = False, source: str = "digits-mlp",
        seeds: int = 5, baselines: tuple[str, ...] = METHODS[1:]) -> dict:
    """The whole study; returns (and writes) ``{"source", "seeds", "levels": [...], "methods": {...}}``."""
    root = Path(out)
    root.mkdir(parents=True, exist_ok=True)
    seed_list = list(range(3 if quick else seeds))
    steps = 100 if quick else None
    sae_steps = 400 if quick else 2000
    config = _CONFIGS[source]
    stores = record_all(source, root, max_inputs=60 if quick and source == "minilm" else _config_inputs(config))
    seed_runs = [flow_run(stores["all"], root / "runs" / f"seed{s}", config, s, steps) for s in seed_list]
    half_runs = [flow_run(stores[h], root / "runs" / h, config, 0, steps) for h in ("half0", "half1")]
    methods = {"rsmi": rsmi_scores(seed_runs, half_runs)}
    for method in baselines:
        log.info("baseline %s", method)
        methods[method] = baseline_scores(method, seed_runs, half_runs, seed_list, stores, sae_steps=sae_steps)
    result = {"source": source, "seeds": seed_list, "quick": quick, "flow_steps": steps, "sae_steps": sae_steps,
              "methods": methods}
    (root / "canonicity.json").write_text(json.dumps(result, indent=1) + "\n")
    _figure(result, root / "canonicity.png")
    print(table(result))
    return result


def _config_inputs(config_name: str) -> int | None:
    """The inputs the shipped config records (its ``max_samples``): the study's "all inputs"."""
    from rsmi_nn.app.config import load_config

    return load_config(config_name).source.max_samples


def table(result: dict) -> str:
    """A markdown table: per level and method, matched |corr| between seeds and between halves."""
    lines = ["| level | method | seeds: mean matched abs corr (min–max) | seeds: > 0.9 | halves: mean | halves: > 0.9 |",
             "|---|---|---|---|---|---|"]
    levels = len(result["methods"]["rsmi"]["seeds"])
    for level in range(levels):
        for method in result["methods"]:
            m = result["methods"][method]
            if level >= len(m["seeds"]):
                continue
            s, h = m["seeds"][level], m["halves"][level]
            lines.append(f"| {level} | {method} | {s['mean_abs_corr']:.3f} ({s['min']:.3f}–{s['max']:.3f}) | "
                         f"{s['fraction_above_0.9']:.2f} | {h['mean_abs_corr']:.3f} | {h['fraction_above_0.9']:.2f} |")
    return "\n".join(lines)


def _figure(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    levels = len(result["methods"]["rsmi"]["seeds"])
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.4), sharey=True)
    width = 0.8 / len(result["methods"])
    for ax, kind in zip(axes, ("seeds", "halves")):
        for i, method in enumerate(result["methods"]):
            vals = [result["methods"][method][kind][lv]["mean_abs_corr"] for lv in range(levels)]
            ax.bar(np.arange(levels) + i * width, vals, width, label=method)
        ax.set_xticks(np.arange(levels) + 0.4 - width / 2, [f"level {lv}" for lv in range(levels)])
        ax.set_title(f"matched |corr| between {kind}")
        ax.set_ylim(0, 1.05)
    axes[0].set_ylabel("mean matched |corr|")
    axes[0].legend(fontsize=8)
    fig.suptitle(f"canonicity of coarse variables: {result['source']}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="runs/canonicity")
    p.add_argument("--quick", action="store_true", help="3 seeds, 100 flow steps, 400 SAE steps")
    p.add_argument("--source", default="digits-mlp", choices=sorted(_CONFIGS))
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--baselines", default=",".join(METHODS[1:]),
                   help="comma list of block-pca,pca,sae (the SAE on MiniLM's 9 216 units costs ~10 CPU-min a fit)")
    args = p.parse_args(argv)
    baselines = tuple(b for b in args.baselines.split(",") if b)
    if unknown := sorted(set(baselines) - set(METHODS[1:])):
        p.error(f"unknown baselines {unknown}; choose from {', '.join(METHODS[1:])}")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    run(args.out, quick=args.quick, source=args.source, seeds=args.seeds, baselines=baselines)


if __name__ == "__main__":
    main()
