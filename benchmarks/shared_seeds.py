"""The shared RSMI step over generator seeds: time, the suite's probe of its filter, its own held-out MI.

One seed of ``bench_vs_rsmine`` cannot tell a change of the shared step's stopping from the lottery of how a
near-uniform filter breaks 2–2 ties (the probe moves by up to ~0.01 between filters 0.01 from uniform), so the
table of the shared step's validation interval (docs/benchmarks-log.md) is five seeds of this: each seed draws
its own samples (and fresh ones for the probe), trains ``coarse_grain(shared=True)`` with the defaults plus any
``--set`` options, and reads the uniform block spin through the same probe.

``python -m benchmarks.shared_seeds [--seeds 5] [--L 32] [--T 2.269185] [--samples 20000] [--set eval_every=50 ...]``
"""

from __future__ import annotations

import argparse
import json
import time


def shared_over_seeds(seeds, L: int, T: float, n: int, **options) -> list[dict]:
    """One row per seed: ``seconds``, ``steps``, ``refit_steps``, ``own_mi`` (mean held-out), ``probe`` (median of
    the 16 probed blocks), ``uniform_probe`` and block 0's filter."""
    from benchmarks.bench_vs_rsmine import probe, probe_blocks, square_regions, uniform_probe
    from experiments.ising_sampler import sample_ising
    from rsmi_nn import coarse_grain

    regions = square_regions(L)
    blocks = probe_blocks(regions)
    rows = []
    for seed in seeds:
        x, fresh = sample_ising(L, T, n, seed=seed), sample_ising(L, T, n, seed=seed + 1000)
        t0 = time.perf_counter()
        res = coarse_grain(x, regions, hidden=1, shared=True, seed=seed, device="cpu", **options)
        seconds = time.perf_counter() - t0
        mi = probe(res.filters, fresh, regions, blocks, mean=res.mean, std=res.std, seed=seed)
        rows.append({"seed": seed, "seconds": round(seconds, 2), "steps": res.info["steps_run"],
                     "refit_steps": res.info["critic_refit_steps"], "own_mi": round(float(res.mi.mean()), 4),
                     "probe": round(float(mi.median()), 4),
                     "uniform_probe": uniform_probe(fresh, regions, blocks, seed),
                     "filter_block0": [round(v, 3) for v in res.filters[0, :, 0].tolist()]})
    return rows


def _option(text: str) -> tuple[str, object]:
    key, sep, value = text.partition("=")
    if not sep:
        raise argparse.ArgumentTypeError(f"--set takes name=value (e.g. eval_every=50), got {text!r}")
    return key, json.loads(value)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=5, help="seeds 0 .. N-1")
    parser.add_argument("--L", type=int, default=32, help="lattice side")
    parser.add_argument("--T", type=float, default=2.269185, help="temperature (T_c by default)")
    parser.add_argument("--samples", type=int, default=20000)
    parser.add_argument("--set", type=_option, action="append", default=[], metavar="NAME=VALUE",
                        help="a coarse_grain option, the value as JSON (repeatable)")
    args = parser.parse_args(argv)
    rows = shared_over_seeds(range(args.seeds), args.L, args.T, args.samples, **dict(args.set))
    for r in rows:
        print(f"seed {r['seed']}: {r['seconds']:.2f} s, {r['steps']} + {r['refit_steps']} steps, probe {r['probe']:.4f}, "
              f"own {r['own_mi']:.4f} (uniform {r['uniform_probe']:.4f})")
    mean = {k: round(sum(r[k] for r in rows) / len(rows), 4) for k in ("seconds", "probe", "own_mi", "uniform_probe")}
    print(json.dumps({"rows": rows, "mean": mean}, indent=1))


if __name__ == "__main__":
    main()
