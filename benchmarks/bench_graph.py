"""Co-occurrence graph: streaming statistics + tile-wise top-k against ``numpy.corrcoef`` + dense top-k.

For each number of units U, on the same seeded activations (N samples, a sparse
latent-factor model so that neighbours are meaningful), three measurements, each in its
own subprocess so that its peak resident memory is its own:

- **ours**: ``graphs.build_graph(x, k=16)`` (two passes, tile-wise, memory budget 2 GiB);
- **baseline**: ``numpy.corrcoef`` (float64, dense U×U) + ``numpy.argpartition`` top-k, run
  only where its dense matrices fit comfortably in this machine's memory;
- **matmul**: the machine's float32 ``torch.mm`` rate on a square-ish product with the same
  inner dimension N — the hardware limit our FLOPs are compared with (measured before and
  after ours, the faster kept).

Every timing is the best of up to three runs (the matmul: eight) within a couple of seconds.

Ours needs ``N·U²`` FLOPs (the upper triangle of the Gram matrix); the reported fraction is
``(N·U² / our time) / matmul rate``. Edge agreement is the fraction of the baseline's top-k
pairs present in our graph. ``python -m benchmarks.bench_graph [--quick] [--device cuda]``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

from benchmarks import memory_gib
from benchmarks.peak import peak_rss_gib

K = 16


def make_activations(num_samples: int, num_units: int, seed: int = 0) -> np.ndarray:
    """Seeded float32 activations from a sparse 64-factor model plus unit noise, shape (N, U)."""
    rng = np.random.default_rng(seed)
    z = rng.standard_normal((num_samples, 64), dtype=np.float32)
    w = rng.standard_normal((64, num_units), dtype=np.float32) * (rng.random((64, num_units)) < 0.08)
    x = z @ w
    x += rng.standard_normal((num_samples, num_units), dtype=np.float32)
    return x


def _best_of(fn, budget_s: float = 2.0, max_reps: int = 3):
    """``(best seconds, last result)`` of up to ``max_reps`` calls, stopping once ``budget_s`` is spent.

    Ours, the baseline and the matmul reference are all timed this way, so a one-off stall
    (page faults of a first large allocation, a busy neighbour) does not decide a ratio.
    """
    best, spent, reps = float("inf"), 0.0, 0
    while reps < max_reps and (reps == 0 or spent + best <= budget_s):
        t0 = time.perf_counter()
        out = fn()
        dt = time.perf_counter() - t0
        best, spent, reps = min(best, dt), spent + dt, reps + 1
    return best, out


def _child(spec: dict) -> dict:
    """Run one measurement in this process and return its figures."""
    import torch

    what, n, u = spec["what"], spec["N"], spec["U"]
    if spec.get("threads"):
        torch.set_num_threads(spec["threads"])
    if what == "matmul":
        dev = torch.device(spec["device"])
        side = min(max(u, 1024), 8192)
        a = torch.randn(side, n, device=dev)
        b = torch.randn(n, side, device=dev)
        sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
        sync()
        best, _ = _best_of(lambda: (torch.mm(a, b), sync()), budget_s=3.0, max_reps=8)
        return {"gflops": 2 * side * side * n / best / 1e9, "side": side}
    x = make_activations(n, u, spec["seed"])
    before = peak_rss_gib()
    if what == "ours":
        from graphs import build_graph

        budget = spec.get("memory_budget") or 2 * 2**30
        build_graph(x[:64, :64], K, device=spec["device"])  # warm-up: lazy library initialisation

        def ours():
            g = build_graph(x, K, device=spec["device"], memory_budget=budget)
            if spec["device"].startswith("cuda"):
                torch.cuda.synchronize()
            return g

        seconds, g = _best_of(ours)
        ei = g.edge_index.numpy()
        pairs = ei[:, ei[0] < ei[1]]
        extra = {"gpu_peak_gib": torch.cuda.max_memory_allocated() / 2**30} if torch.cuda.is_available() else {}
    else:
        np.corrcoef(x[:64, :64].T)  # warm-up, as for ours

        def baseline():
            r = np.abs(np.corrcoef(x.T))
            np.fill_diagonal(r, -np.inf)
            return np.argpartition(-r, K, axis=1)[:, :K]

        seconds, top = _best_of(baseline)
        rows = np.repeat(np.arange(u), K)
        cols = top.reshape(-1)
        pairs = np.unique(np.stack([np.minimum(rows, cols), np.maximum(rows, cols)]), axis=1)
        extra = {}
    if spec.get("pairs_out"):
        np.save(spec["pairs_out"], pairs)
    return {"seconds": seconds, "peak_rss_gib": peak_rss_gib(), "rss_before_gib": before, **extra}


def _measure(spec: dict, timeout: float | None = None) -> dict:
    cmd = [sys.executable, "-m", "benchmarks.bench_graph", "--child", json.dumps(spec)]
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ)
    if spec.get("threads"):  # numpy's BLAS reads these at import time
        for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
            env[var] = str(spec["threads"])
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=root, timeout=timeout, env=env, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"{spec['what']} U={spec['U']} failed: {out.stderr.strip()[-800:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def run(quick: bool = False, device: str = "cpu", sizes=None, num_samples: int | None = None,
        threads: int | None = None) -> dict:
    """Run the benchmark; print a table; return ``{"rows": [...], ...}`` with every ratio.

    ``threads`` fixes the CPU threads of every measurement (torch and numpy's BLAS alike);
    by default each uses the libraries' defaults.
    """
    n = num_samples or (2048 if quick else 4096)
    if sizes is None:
        sizes = [1000, 2000, 4000, 8000] if quick else [1000, 2000, 5000, 10000, 20000, 50000]
    mem = memory_gib() or 8.0  # unknown: assume a small machine
    rows = []
    print(f"{'U':>7} {'N':>5} | {'ours s':>8} {'GF/s':>7} {'mm GF/s':>8} {'frac':>5} {'peak GiB':>8} | "
          f"{'base s':>8} {'peak GiB':>8} | {'speedup':>7} {'mem ratio':>9} {'agree':>6}", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        for u in sizes:
            spec = {"N": n, "U": u, "seed": 0, "device": device, "threads": threads}
            # the reference is measured on both sides of ours and the faster kept: a rate read
            # during a stall would flatter the fraction
            before = _measure({**spec, "what": "matmul"})
            ours = _measure({**spec, "what": "ours", "pairs_out": os.path.join(tmp, "ours.npy")})
            mm = max(before, _measure({**spec, "what": "matmul"}), key=lambda r: r["gflops"])
            flops = float(n) * u * u
            row = {"U": u, "N": n, "k": K, "device": device, "flops": flops,
                   "ours_seconds": ours["seconds"], "ours_gflops": flops / ours["seconds"] / 1e9,
                   "matmul_gflops": mm["gflops"], "ours_peak_rss_gib": ours["peak_rss_gib"],
                   "input_gib": n * u * 4 / 2**30}
            row["fraction_of_matmul"] = row["ours_gflops"] / mm["gflops"]
            if "gpu_peak_gib" in ours:
                row["ours_gpu_peak_gib"] = ours["gpu_peak_gib"]
            # numpy.corrcoef holds ~3 float64 U×U arrays, argpartition one int64 U×U more
            baseline_gib = 4 * 8 * u * u / 2**30 + 3 * n * u * 8 / 2**30
            if baseline_gib < 0.6 * mem:
                base = _measure({**spec, "what": "baseline", "pairs_out": os.path.join(tmp, "base.npy")})
                ref = {tuple(p) for p in np.load(os.path.join(tmp, "base.npy")).T.tolist()}
                got = {tuple(p) for p in np.load(os.path.join(tmp, "ours.npy")).T.tolist()}
                row.update(baseline_seconds=base["seconds"], baseline_peak_rss_gib=base["peak_rss_gib"],
                           speedup=base["seconds"] / ours["seconds"],
                           memory_ratio=ours["peak_rss_gib"] / base["peak_rss_gib"],
                           edge_agreement=len(ref & got) / len(ref))
            else:
                row["baseline_skipped"] = f"needs ~{baseline_gib:.0f} GiB of {mem:.0f} GiB"
            rows.append(row)
            print(f"{u:>7} {n:>5} | {row['ours_seconds']:>8.2f} {row['ours_gflops']:>7.1f} {mm['gflops']:>8.1f} "
                  f"{row['fraction_of_matmul']:>5.2f} {row['ours_peak_rss_gib']:>8.2f} | "
                  + (f"{row['baseline_seconds']:>8.2f} {row['baseline_peak_rss_gib']:>8.2f} | "
                     f"{row['speedup']:>7.2f} {row['memory_ratio']:>9.2f} {row['edge_agreement']:>6.3f}"
                     if "speedup" in row else f"{'-':>8} {'-':>8} | {row['baseline_skipped']}"), flush=True)
    return {"rows": rows, "k": K, "num_samples": n, "device": device, "threads": threads,
            "notes": "ours = graphs.build_graph (memory_budget 2 GiB); baseline = numpy.corrcoef + argpartition; "
                     "FLOPs = N*U^2; fraction = our FLOP rate / torch.mm float32 rate; each in its own subprocess"}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench_graph", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="U up to 8 000, N = 2 048 (about 2-3 minutes)")
    parser.add_argument("--device", default="cpu", help="device for ours and the matmul rate (cpu, cuda)")
    parser.add_argument("--sizes", type=int, nargs="*", help="numbers of units to run")
    parser.add_argument("--samples", type=int, help="number of samples N")
    parser.add_argument("--threads", type=int, help="CPU threads for every measurement (default: library defaults)")
    parser.add_argument("--out", help="also write the results as JSON here")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(_child(json.loads(args.child))), flush=True)
        return 0
    res = run(quick=args.quick, device=args.device, sizes=args.sizes, num_samples=args.samples, threads=args.threads)
    if args.out:
        with open(args.out, "w") as fh:
            json.dump(res, fh, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
