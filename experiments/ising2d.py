"""2D Ising study: the learned block spin at T_c, I(H;E) against temperature, and the ξ flow at T = 2.5.

Run: ``python -m experiments.ising2d [--out DIR] [--quick]``. Writes ``ising2d.json`` and three
PNGs: ``filter_tc.png`` (the learned 2×2 filter at T_c; expected four same-sign, near-equal
weights), ``mi_vs_temperature.png`` (held-out I(H;E) of one binary H per 2×2 block) and
``xi_flow.png`` (correlation length per level against the exact ξ/2^level). The sampler lives in
:mod:`experiments.ising_sampler` and is re-exported here (``from experiments.ising2d import sample_ising``).

I(H;E) is measured on two ensembles. The sampler's own is symmetric: below T_c a finite lattice visits
both magnetisations, so the environment tells the block which phase the sample is in and I(H;E) tends to
ln 2 as T -> 0 (Gökmen et al. 2021) -- it falls monotonically with T. Flipping every sample to m >= 0
breaks the symmetry as an infinite system does; what is left is the connected, fluctuation part, which
vanishes deep in both phases and is largest near the critical point (on a finite lattice the maximum sits
a little above T_c, the pseudo-critical shift).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import time
from pathlib import Path

import numpy as np

from experiments.ising_sampler import (
    T_CRITICAL,
    exact_correlation_length,
    exact_energy,
    exact_energy_finite,
    exact_magnetisation,
    sample_ising,
)
from graphs.atomic import atomic_write, atomic_write_bytes

__all__ = [
    "T_CRITICAL",
    "exact_correlation_length",
    "exact_energy",
    "exact_energy_finite",
    "exact_magnetisation",
    "run",
    "sample_ising",
]

log = logging.getLogger(__name__)

FULL = {"L": 32, "n": 20000, "temperatures": [1.8, 2.0, 2.2, T_CRITICAL, 2.4, 2.6, 3.0, 3.5],
        "flow_L": 32, "flow_n": 20000, "flow_levels": 2, "steps": 3000}
# quick: the flow still needs L = 32 — at L = 16 a ξ ≈ 6 correlation fills the torus and the fit is meaningless
QUICK = {"L": 16, "n": 6000, "temperatures": [2.0, T_CRITICAL, 2.5, 3.0],
         "flow_L": 32, "flow_n": 8000, "flow_levels": 2, "steps": 800}


def _save_fig(fig, path: Path) -> None:
    import matplotlib.pyplot as plt

    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=120))
    plt.close(fig)


def _block_step(x, L: int, seed: int, steps: int, progress: bool):
    from graphs import lattice_blocks, lattice_graph, make_regions
    from rsmi_nn import coarse_grain

    regions = make_regions(lattice_graph(L), lattice_blocks(L, 2), buffer=1, env=1, seed=seed)
    return coarse_grain(x, regions, shared=True, binarize=True, seed=seed, steps=steps, progress=progress)


def run(out: str | os.PathLike = "runs/ising2d", *, quick: bool = False, seed: int = 0, progress: bool = True) -> dict:
    """Run the three studies; returns (and writes) the JSON record."""
    p = QUICK if quick else FULL
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    record: dict = {"quick": quick, "seed": seed, "params": {k: v for k, v in p.items()}}
    t_all = time.time()
    # 1. filter at T_c, and 2. I(H;E) against temperature (shared filter, one binary H per 2x2 block)
    mi_rows = []
    for i, T in enumerate(p["temperatures"]):
        row, res = _temperature_row(T, p, seed, seed + i, progress)
        mi_rows.append(row)
        if abs(T - T_CRITICAL) < 1e-9:
            w = row["filter"]
            record["filter_tc"] = {"weights": w, "layout": "row-major 2x2: (0,0) (0,1) (1,0) (1,1)",
                                   "mi": row["mi"], "mi_ceiling": res.mi_ceiling,
                                   "spread": float((max(w) - min(w)) / np.mean(w))}
            _filter_figure(w, p["L"], out / "filter_tc.png")
    record["mi_vs_temperature"] = mi_rows
    _mi_figure(mi_rows, p["L"], out / "mi_vs_temperature.png")
    # 3. xi flow at T = 2.5
    record["xi_flow"] = _xi_flow(p, seed, out, progress)
    _xi_figure(record["xi_flow"], p["flow_L"], out / "xi_flow.png")
    record["seconds_total"] = time.time() - t_all
    atomic_write_bytes(out / "ising2d.json", json.dumps(record, indent=1).encode())
    return record


def _temperature_row(T: float, p: dict, seed: int, sample_seed: int, progress: bool):
    """Block spin at temperature ``T``, on the samples as drawn and with the symmetry broken (m >= 0)."""
    t0 = time.time()
    x = sample_ising(p["L"], T, p["n"], seed=sample_seed, progress=progress)
    t1 = time.time()
    res = _block_step(x, p["L"], seed, p["steps"], progress)
    w = res.filters[0, :, 0].tolist()
    flip = (x.sum(1, keepdim=True) >= 0).to(x.dtype) * 2 - 1  # every sample to m >= 0
    broken = _block_step(x * flip, p["L"], seed, p["steps"], progress)
    spins = x.view(-1, p["L"], p["L"])
    row = {"T": T, "mi": float(res.mi.mean()), "mi_sem": float(res.mi.std() / np.sqrt(res.mi.numel())),
           "mi_symmetry_broken": float(broken.mi.mean()),
           "mi_symmetry_broken_sem": float(broken.mi.std() / np.sqrt(broken.mi.numel())),
           "filter": w, "filter_symmetry_broken": broken.filters[0, :, 0].tolist(),
           "seconds_sampling": t1 - t0, "seconds_training": time.time() - t1,
           "energy": float(-(spins * (spins.roll(-1, 1) + spins.roll(-1, 2))).mean(dim=(1, 2)).mean()),
           "energy_exact_finite_L": exact_energy_finite(p["L"], T)}
    log.info("T=%.3f: I(H;E) = %.4f nats (symmetry broken: %.4f), filter %s", T, row["mi"],
             row["mi_symmetry_broken"], np.round(w, 3).tolist())
    return row, res


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _filter_figure(w: list[float], L: int, path: Path) -> None:
    fig, ax = _pyplot().subplots(figsize=(3.6, 3.2))
    im = ax.imshow(np.array(w).reshape(2, 2), cmap="RdBu_r", vmin=-1, vmax=1)
    for (r, c), v in np.ndenumerate(np.array(w).reshape(2, 2)):
        ax.text(c, r, f"{v:.2f}", ha="center", va="center")
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(f"2×2 filter at T_c (L={L})")
    fig.colorbar(im, ax=ax)
    _save_fig(fig, path)


def _mi_figure(mi_rows: list[dict], L: int, path: Path) -> None:
    fig, ax = _pyplot().subplots(figsize=(5, 3.6))
    temps = [r["T"] for r in mi_rows]
    ax.errorbar(temps, [r["mi"] for r in mi_rows], yerr=[r["mi_sem"] for r in mi_rows], marker="o",
                label="samples as drawn (both phases)")
    ax.errorbar(temps, [r["mi_symmetry_broken"] for r in mi_rows], yerr=[r["mi_symmetry_broken_sem"] for r in mi_rows],
                marker="s", label="symmetry broken (m ≥ 0)")
    ax.axvline(T_CRITICAL, color="k", ls="--", lw=1, label="T_c")
    ax.axhline(np.log(2), color="gray", ls=":", lw=1, label="ln 2")
    ax.set_xlabel("T")
    ax.set_ylabel("held-out I(H;E) (nats)")
    ax.set_title(f"one binary H per 2×2 block, L={L}")
    ax.legend(fontsize=8)
    _save_fig(fig, path)


def _xi_flow(p: dict, seed: int, out: Path, progress: bool, T: float = 2.5) -> dict:
    """The decimation flow at ``T`` above T_c: measured ξ per level against the exact ξ / 2^level."""
    from graphs import lattice_graph
    from rsmi_nn import run_flow

    t0 = time.time()
    x = sample_ising(p["flow_L"], T, p["flow_n"], seed=seed + 100, progress=progress)
    flow = run_flow(x, lattice_graph(p["flow_L"]), levels=p["flow_levels"], block_size=4, out=out / "flow_T2.5",
                    seed=seed, binarize=True, shared=True, steps=p["steps"], progress=progress, overwrite=True)
    xi_exact = exact_correlation_length(T)
    levels = [{"level": rec["level"], "L": round(rec["num_nodes"] ** 0.5), "xi": rec["correlation_length"],
               "xi_level0": rec["correlation_length_level0"], "xi_out": rec["correlation_length_out"],
               "fit": rec["correlation_fit"], "exact_xi": xi_exact / 2 ** rec["level"],
               "mi_mean": rec["mi_mean"], "locality": rec["locality"]} for rec in flow.records]
    ratios = [levels[i + 1]["xi"] / levels[i]["xi"] for i in range(len(levels) - 1)]
    if levels and levels[-1]["xi_out"] is not None:
        ratios.append(levels[-1]["xi_out"] / levels[-1]["xi"])
    return {"T": T, "exact_xi": xi_exact, "levels": levels, "ratios": ratios, "seconds": time.time() - t0,
            "note": "xi fitted in lattice hops (L1 distance) on a finite periodic lattice; "
                    "the exact value is the infinite-lattice axis correlation length"}


def _xi_figure(xi_flow: dict, L: int, path: Path) -> None:
    levels, xi_exact = xi_flow["levels"], xi_flow["exact_xi"]
    fig, ax = _pyplot().subplots(figsize=(5, 3.6))
    lv = [r["level"] for r in levels] + ([levels[-1]["level"] + 1] if levels and levels[-1]["xi_out"] else [])
    xs = [r["xi"] for r in levels] + ([levels[-1]["xi_out"]] if levels and levels[-1]["xi_out"] else [])
    ax.semilogy(lv, xs, "o-", label="measured ξ (own hops)")
    ax.semilogy(lv, [xi_exact / 2**v for v in lv], "k--", label="exact ξ / 2^level")
    ax.set_xlabel("level")
    ax.set_ylabel("ξ")
    ax.set_title(f"decimation flow at T = 2.5, L = {L}")
    ax.legend()
    _save_fig(fig, path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/ising2d", help="output folder")
    parser.add_argument("--quick", action="store_true", help="small lattices (minutes instead of an hour)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    rec = run(args.out, quick=args.quick, seed=args.seed, progress=not args.quiet)
    tc = rec.get("filter_tc", {})
    print(f"filter at T_c: {np.round(tc.get('weights', []), 3).tolist()} (I = {tc.get('mi', float('nan')):.3f} nats)")
    for r in rec["mi_vs_temperature"]:
        print(f"T = {r['T']:.3f}: I(H;E) = {r['mi']:.3f} ± {r['mi_sem']:.3f} nats; symmetry broken "
              f"{r['mi_symmetry_broken']:.3f} ± {r['mi_symmetry_broken_sem']:.3f}")
    for r in rec["xi_flow"]["levels"]:
        print(f"level {r['level']} (L={r['L']}): xi = {r['xi']:.2f} hops (exact/2^l = {r['exact_xi']:.2f})")
    print(f"total {rec['seconds_total']:.0f} s -> {Path(args.out) / 'ising2d.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
