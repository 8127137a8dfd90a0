"""One RSMI level: all blocks batched against a Python loop over blocks, same code, same model.

The samples are a Gaussian lattice field (``experiments.fields.gaussian_field_on`` on the periodic L×L
lattice, mass ``FIELD_MASS``: correlation length ≈ 3.3 sites, so every 2×2 block has informative
neighbours; exact FFT sampling, seconds even at L = 200). Both sides
run ``rsmi_nn.coarse_grain`` with the same settings and a fixed number of steps (early stopping off,
so the work is equal); the loop calls it once per block (``regions.select([j])``). At large J the loop
is timed on a seeded subset of blocks and extrapolated linearly — the output says so. MI is compared on
that subset: batched and looped training should agree within the estimator's noise.

``python -m benchmarks.bench_rsmi [--quick]``
"""

from __future__ import annotations

import time

import torch

from benchmarks import suite_main

BLOCK_COUNTS_FULL = (100, 1_000, 10_000)
BLOCK_COUNTS_QUICK = (100, 1_000)
FIELD_MASS = 0.3  # ξ ≈ 3.3 sites: a 2×2 block's CCA optimum is 0.22 nats


def _time(fn) -> tuple[float, object]:
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def bench_level(n_blocks: int, *, n_samples: int, steps: int, loop_subset: int, seed: int = 0) -> dict:
    """Time one level with ``n_blocks`` 2×2 blocks, batched vs looped over (a subset of) blocks."""
    from experiments.fields import gaussian_field_on
    from graphs import lattice_blocks, lattice_graph, make_regions
    from rsmi_nn import coarse_grain

    L = 2 * round(n_blocks ** 0.5)
    graph = lattice_graph(L)
    x = gaussian_field_on(graph, n_samples, mass=FIELD_MASS, seed=seed)
    regions = make_regions(graph, lattice_blocks(L, 2), buffer=1, env=1)
    options = dict(steps=steps, patience=10 ** 6, eval_every=steps, seed=seed, device="cpu")

    t_batched, batched = _time(lambda: coarse_grain(x, regions, **options))
    subset = torch.randperm(regions.num_blocks, generator=torch.Generator().manual_seed(seed))[:loop_subset]
    loop_mi = []

    def loop():  # each looped block its own seed: one shared seed would give them all one initial filter
        for j in subset.tolist():
            loop_mi.append(float(coarse_grain(x, regions.select([j]), **{**options, "seed": seed + 1 + j}).mi[0]))

    t_subset, _ = _time(loop)
    t_loop = t_subset * regions.num_blocks / len(subset)
    batched_mi = batched.mi[subset]
    diff = torch.tensor(loop_mi) - batched_mi
    return {
        "blocks": regions.num_blocks,
        "L": L,
        "n_samples": n_samples,
        "steps": steps,
        "batched_s": round(t_batched, 3),
        "loop_s": round(t_loop, 3),
        "loop_measured_blocks": len(subset),
        "loop_extrapolated": len(subset) < regions.num_blocks,
        "speedup": round(t_loop / t_batched, 1),
        "mi_batched_mean": round(float(batched_mi.mean()), 4),
        "mi_loop_mean": round(sum(loop_mi) / len(loop_mi), 4),
        "mi_abs_diff_mean": round(float(diff.abs().mean()), 4),
    }


def run(quick: bool = False) -> dict:
    """Run the batched-vs-loop comparison; returns one record per block count."""
    torch.manual_seed(0)
    counts = BLOCK_COUNTS_QUICK if quick else BLOCK_COUNTS_FULL
    rows = []
    for j in counts:
        row = bench_level(j, n_samples=2048, steps=200 if quick else 400, loop_subset=min(j, 10 if quick else 25))
        rows.append(row)
        print(f"  J={row['blocks']:>6}  batched {row['batched_s']:8.2f} s   loop {row['loop_s']:9.1f} s"
              f"{' (extrapolated from ' + str(row['loop_measured_blocks']) + ' blocks)' if row['loop_extrapolated'] else ''}"
              f"   speedup {row['speedup']:7.1f}x   MI batched {row['mi_batched_mean']:.3f} vs loop "
              f"{row['mi_loop_mean']:.3f} nats", flush=True)
    return {"levels": rows}


def main(argv: list[str] | None = None) -> None:
    suite_main(run, __doc__, "100 and 1 000 blocks, fewer steps", argv)


if __name__ == "__main__":
    main()
