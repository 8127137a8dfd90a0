"""Benchmark the MI estimators: one batched program vs a Python loop, KSG, and the ANCHORS cases.

``python -m benchmarks.bench_estimators [--quick]``. Prints a table and returns (``run``) a
dict of the figures. Sizes:

* batched vs loop: P problems (1-D Gaussians, MI spread over [0, 1.5] nats, N rows each) in one
  ``estimate_mi`` call, against ``estimate_mi`` called once per problem on a random subset of
  the same problems (the loop's total time is *extrapolated* from the subset, and said so);
  also the training throughput of each (rows through Adam steps per second, all problems);
  KSG (``ksg_mi``, k=3) on every problem for reference;
* ANCHORS.md cases: A (2+2 dims, rho = 0.8, 0.6, N = 8000, 0.734 nats), B (24 separate 1-D
  problems, rho = 0.1 ... 0.9, N = 4000, one batched call), C (10+10 dims, rho = 0.5, N = 20000,
  1.438 nats).
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from estimators import estimate_mi, ksg_mi
from estimators.samplers import gaussian_pairs

__all__ = ["run"]


def _timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def _timed_cpu(fn):
    """``(fn(), wall s, CPU s of this process)``: the CPU time is the fairer figure on a machine shared with
    other jobs (each side is charged its own work, not the time it waited for a core)."""
    c0 = time.process_time()
    out, wall = _timed(fn)
    return out, wall, time.process_time() - c0


def batched_vs_loop(n_problems: int, n_samples: int, loop_subset: int, seed: int = 0) -> dict:
    """Batched estimator on ``n_problems`` problems vs a per-problem loop (subset, extrapolated)."""
    gen = np.random.default_rng(seed)
    truth = gen.uniform(0.0, 1.5, n_problems)
    rho = np.sqrt(1 - np.exp(-2 * truth)).reshape(-1, 1)
    x, y, exact = gaussian_pairs(n_samples, rho, seed=seed)
    exact = exact.numpy()
    batch = 128  # estimate_mi's default for InfoNCE, passed explicitly so that rows/s below counts it
    res, t_batch, cpu_batch = _timed_cpu(lambda: estimate_mi(x, y, seed=seed, batch_size=batch))
    mae_batch = float(np.abs(res.mi.numpy() - exact).mean())

    subset = gen.choice(n_problems, size=min(loop_subset, n_problems), replace=False)
    loop_res, t_loop_sub, cpu_loop_sub = _timed_cpu(
        lambda: [estimate_mi(x[p], y[p], seed=seed, batch_size=batch) for p in subset])
    t_loop = t_loop_sub * n_problems / len(subset)
    mae_loop = float(np.abs(np.array([r.mi for r in loop_res]) - exact[subset]).mean())
    mae_batch_subset = float(np.abs(res.mi.numpy()[subset] - exact[subset]).mean())  # like for like
    # training throughput: rows through Adam steps per second, summed over problems (validation included)
    rows_batch = res.steps * batch * n_problems
    rows_loop = sum(r.steps * batch for r in loop_res)

    ksg_est, t_ksg = _timed(lambda: [ksg_mi(x[p], y[p]) for p in range(n_problems)])
    mae_ksg = float(np.abs(np.array(ksg_est) - exact).mean())
    return {
        "n_problems": n_problems, "n_samples": n_samples,
        "batched_s": t_batch, "batched_mae": mae_batch, "batched_steps": res.steps,
        "loop_subset": len(subset), "loop_subset_s": t_loop_sub, "loop_s_extrapolated": t_loop,
        "loop_mae_subset": mae_loop, "batched_mae_subset": mae_batch_subset,
        "speedup_batched_vs_loop": t_loop / t_batch,
        "batched_cpu_s": cpu_batch, "loop_subset_cpu_s": cpu_loop_sub,
        "speedup_cpu": cpu_loop_sub * n_problems / len(subset) / cpu_batch,
        "batched_rows_per_s": rows_batch / t_batch, "loop_rows_per_s": rows_loop / t_loop_sub,
        "ksg_s": t_ksg, "ksg_mae": mae_ksg,
    }


def anchor_cases(quick: bool, seed: int = 0) -> dict:
    """ANCHORS.md cases A, B (batched) and C with the default InfoNCE estimator."""
    out = {}
    x, y, mi = gaussian_pairs(8000, [0.8, 0.6], seed=seed)
    res, t = _timed(lambda: estimate_mi(x, y, seed=seed))
    out["A"] = {"truth": mi, "estimate": res.mi, "stderr": res.stderr, "rel_error": abs(res.mi - mi) / mi, "seconds": t}

    rho = np.linspace(0.1, 0.9, 24).reshape(-1, 1)
    x, y, mi = gaussian_pairs(4000, rho, seed=seed)
    res, t = _timed(lambda: estimate_mi(x, y, seed=seed))
    err = (res.mi.double() - mi).abs()
    out["B"] = {"n_problems": 24, "mae": float(err.mean()), "max_abs_error": float(err.max()), "seconds": t}

    if not quick:
        x, y, mi = gaussian_pairs(20000, [0.5] * 10, seed=seed)
        res, t = _timed(lambda: estimate_mi(x, y, seed=seed))
        out["C"] = {"truth": mi, "estimate": res.mi, "stderr": res.stderr, "rel_error": abs(res.mi - mi) / mi,
                    "seconds": t}
        for bound in ("dv", "smile"):
            r, tb = _timed(lambda b=bound: estimate_mi(x, y, bound=b, seed=seed))
            out[f"C_{bound}"] = {"estimate": r.mi, "rel_error": abs(r.mi - mi) / mi, "seconds": tb}
    return out


def run(quick: bool = False) -> dict:
    """Run the estimator benchmarks and print a summary; return the figures."""
    torch.manual_seed(0)
    if quick:
        bvl = batched_vs_loop(n_problems=200, n_samples=2000, loop_subset=4)
    else:
        bvl = batched_vs_loop(n_problems=1000, n_samples=2000, loop_subset=10)
    anchors = anchor_cases(quick)
    print(f"batched estimate_mi, P={bvl['n_problems']} problems x N={bvl['n_samples']}: "
          f"{bvl['batched_s']:.1f} s, MAE {bvl['batched_mae']:.4f} nats ({bvl['batched_steps']} steps)")
    print(f"python loop, same code: {bvl['loop_subset']} problems took {bvl['loop_subset_s']:.1f} s -> "
          f"{bvl['loop_s_extrapolated']:.0f} s for all {bvl['n_problems']} (extrapolated), "
          f"MAE {bvl['loop_mae_subset']:.4f} on the subset (batched on the same problems: "
          f"{bvl['batched_mae_subset']:.4f})")
    print(f"speed ratio batched vs loop: {bvl['speedup_batched_vs_loop']:.1f}x in wall time, "
          f"{bvl['speedup_cpu']:.1f}x in CPU time ({bvl['batched_cpu_s']:.1f} s vs {bvl['loop_subset_cpu_s']:.1f} s for "
          f"{bvl['loop_subset']} problems); training rows/s "
          f"{bvl['batched_rows_per_s']:.3g} batched vs {bvl['loop_rows_per_s']:.3g} looped "
          f"({bvl['batched_rows_per_s'] / bvl['loop_rows_per_s']:.1f}x)")
    print(f"KSG (k=3) loop over all problems: {bvl['ksg_s']:.1f} s, MAE {bvl['ksg_mae']:.4f} nats")
    a = anchors["A"]
    print(f"case A (2+2 dims, true {a['truth']:.3f}): {a['estimate']:.3f} +- {a['stderr']:.3f}, "
          f"rel. error {100 * a['rel_error']:.1f} %, {a['seconds']:.1f} s")
    b = anchors["B"]
    print(f"case B (24 1-D problems, one call): MAE {b['mae']:.4f}, max {b['max_abs_error']:.4f} nats, "
          f"{b['seconds']:.1f} s")
    if "C" in anchors:
        c = anchors["C"]
        print(f"case C (10+10 dims, N=20000, true {c['truth']:.3f}): {c['estimate']:.3f} +- {c['stderr']:.3f}, "
              f"rel. error {100 * c['rel_error']:.1f} %, {c['seconds']:.1f} s")
        for bound in ("dv", "smile"):
            cb = anchors[f"C_{bound}"]
            print(f"case C with {bound}: {cb['estimate']:.3f}, rel. error {100 * cb['rel_error']:.1f} %, "
                  f"{cb['seconds']:.1f} s")
    return {"batched_vs_loop": bvl, "anchors": anchors}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench_estimators", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="smaller sizes (P=200, no case C)")
    run(quick=parser.parse_args(argv).quick)


if __name__ == "__main__":
    main()
