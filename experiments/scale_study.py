"""Scale study: which flow invariants stay the same as a model grows wider?

``python -m experiments.scale_study [--quick] [--out DIR] [--widths 32,64,128,256,512]``

The founding notes' first prediction: an invariant measured on a small model matches the large
one within 5 %. A family of digits MLPs of growing hidden width ``w`` (hidden layers ``w`` and
``w // 2``; the ``width`` option of the ``digits-mlp`` source, each trained deterministically and
cached like the default one) is recorded on the same 1 797 digits and run through the same flow
(the shipped ``digits-mlp`` config). :func:`rsmi_nn.app.compare_runs` measures every run's
invariants per level (and the GW distances and cross-width matching, since the inputs are shared).
For each scalar invariant and level: its relative spread across widths (``(max - min) / |mean|``,
within 5 % or not) and a least-squares fit ``value = a + b·log2(w)`` (the change per doubling of
width, with its standard error). Writes ``DIR/scale_study.json``, ``DIR/compare/`` (the comparison)
and one plot per invariant against width, ``DIR/plots/<invariant>.png``.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
from pathlib import Path

import numpy as np

from rsmi_nn.app.compare_invariants import SCALAR_INVARIANTS

log = logging.getLogger(__name__)

WIDTHS = (32, 64, 128, 256, 512)


def width_run(width: int, out: Path, *, steps: int | None, seed: int = 0) -> Path:
    """The ``digits-mlp`` config's run on the MLP of hidden width ``width`` (resumed when already there)."""
    from rsmi_nn.app.config import load_config
    from rsmi_nn.app.pipeline import run_pipeline

    cfg = load_config("digits-mlp")
    cfg.update([("source.options", {"width": width}, "scale_study"), ("run.seed", seed, "scale_study"),
                ("run.quiet", True, "scale_study"), ("run.device", "cpu", "scale_study")]
               + ([("flow.steps", steps, "scale_study")] if steps else []))
    return run_pipeline(cfg, out, report=False, progress=False)


def fit_against_width(widths, values) -> dict | None:
    """``value = a + b·log2(width)`` by least squares: ``b`` (change per doubling), its standard error, ``b / mean``."""
    pts = [(w, v) for w, v in zip(widths, values) if v is not None and math.isfinite(v)]
    if len(pts) < 3:
        return None
    x = np.log2([w for w, _ in pts])
    y = np.asarray([v for _, v in pts], dtype=np.float64)
    design = np.stack([np.ones_like(x), x], 1)
    coef, *_ = np.linalg.lstsq(design, y, rcond=None)
    resid = y - design @ coef
    dof = len(y) - 2
    sigma2 = float(resid @ resid) / dof if dof > 0 else math.nan
    se = math.sqrt(sigma2 * np.linalg.inv(design.T @ design)[1, 1]) if dof > 0 else math.nan
    mean = float(y.mean())
    return {"intercept": float(coef[0]), "per_doubling": float(coef[1]), "per_doubling_se": se,
            "per_doubling_relative": float(coef[1] / abs(mean)) if mean else math.nan}


def summarise(comparison: dict, labels: dict[str, int]) -> dict:
    """Per invariant and level: values against width, relative spread, the fit against log2(width)."""
    out = {}
    for name in SCALAR_INVARIANTS:
        per_level = []
        for lv in comparison["levels"]:
            widths = [labels[r] for r in comparison["runs"] if r in lv["invariants"]]
            values = [lv["invariants"][r].get(name) for r in comparison["runs"] if r in lv["invariants"]]
            spread = lv["spread"].get(name)
            per_level.append({"level": lv["level"], "widths": widths, "values": values,
                              "relative_spread": None if spread is None else spread["relative_spread"],
                              "within_5pct": None if spread is None else spread["within_5pct"],
                              "fit": fit_against_width(widths, values)})
        out[name] = per_level
    return out


def run(out: str | Path = "runs/scale_study", *, quick: bool = False, widths=WIDTHS) -> dict:
    """The whole study; returns (and writes) ``{"widths", "invariants": {name: [per level]}, "matching", "gw"}``."""
    from rsmi_nn.app.compare import compare_runs

    root = Path(out)
    root.mkdir(parents=True, exist_ok=True)
    widths = list(widths[:3] if quick else widths)
    steps = 100 if quick else None
    runs = {}
    for w in widths:
        log.info("width %d", w)
        runs[w] = width_run(w, root / "runs" / f"w{w}", steps=steps)
    labels = {f"w{w}": w for w in widths}
    comparison = compare_runs([runs[w] for w in widths], root / "compare", labels=list(labels))
    result = {"widths": widths, "quick": quick, "flow_steps": steps,
              "units": {w: comparison["run_info"][f"w{w}"]["sizes"] for w in widths},
              "invariants": summarise(comparison, labels),
              "matching": [lv["matching"] for lv in comparison["levels"]],
              "gw": [{"level": lv["level"], "pairs": {f"{p['a']}-{p['b']}": p["gw_distance"] for p in lv["pairs"]}}
                     for lv in comparison["levels"]]}
    for lv in result["matching"]:
        lv.pop("pairs", None)
    (root / "scale_study.json").write_text(json.dumps(result, indent=1, default=str) + "\n")
    _plots(result, root / "plots")
    print(table(result))
    return result


def table(result: dict) -> str:
    """Markdown: per invariant and level, the values from the narrowest to the widest model, spread and drift."""
    lines = ["| invariant | level | values (w = " + ", ".join(map(str, result["widths"])) + ") | spread | "
             "within 5 % | change per doubling (± s.e.) |", "|---|---|---|---|---|---|"]
    for name, levels in result["invariants"].items():
        for lv in levels:
            vals = ", ".join("–" if v is None else f"{v:.3g}" for v in lv["values"])
            fit = lv["fit"]
            drift = "–" if fit is None else f"{fit['per_doubling']:+.3g} (± {fit['per_doubling_se']:.2g})"
            spread = "–" if lv["relative_spread"] is None else f"{lv['relative_spread']:.1%}"
            lines.append(f"| {name} | {lv['level']} | {vals} | {spread} | {'yes' if lv['within_5pct'] else 'no'} | "
                         f"{drift} |")
    return "\n".join(lines)


def _plots(result: dict, folder: Path) -> None:
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    folder.mkdir(parents=True, exist_ok=True)
    for name, levels in result["invariants"].items():
        fig, ax = plt.subplots(figsize=(4.5, 3.2))
        for lv in levels:
            pts = [(w, v) for w, v in zip(lv["widths"], lv["values"]) if v is not None]
            if pts:
                spread = lv["relative_spread"]
                label = f"level {lv['level']}" + ("" if spread is None else f" (spread {spread:.0%})")
                ax.plot(*zip(*pts), "o-", label=label)
        ax.set_xscale("log", base=2)
        ax.set_xlabel("hidden width w")
        ax.set_title(name)
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(folder / f"{name}.png", dpi=110)
        plt.close(fig)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="runs/scale_study")
    p.add_argument("--quick", action="store_true", help="widths 32, 64, 128 and 100 flow steps")
    p.add_argument("--widths", default=",".join(map(str, WIDTHS)), help="comma list of hidden widths")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    run(args.out, quick=args.quick, widths=tuple(int(w) for w in args.widths.split(",")))


if __name__ == "__main__":
    main()
