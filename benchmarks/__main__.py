"""``python -m benchmarks [--quick]``: run every benchmark, print one table, write JSON.

Every figure is a ratio measured in the same run (ours / baseline, ours / hardware limit),
with the machine named, so results from different machines can be compared.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import os
import platform
import sys
import time
from pathlib import Path

from benchmarks import cpu_model, memory_gib
from graphs.atomic import atomic_write

SUITES = ["bench_estimators", "bench_graph", "bench_rsmi", "bench_end_to_end", "bench_vs_rsmine", "bench_distributed"]
RESULTS = Path(__file__).resolve().parent / "results"


def machine() -> dict:
    """Describe the machine the figures were measured on (and, first, let torch's large CPU tensors come from huge
    pages as the engine's do: :func:`estimators.device.huge_page_allocations`)."""
    import torch

    from estimators.device import huge_page_allocations

    info = {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "torch_huge_pages": huge_page_allocations(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "python": sys.version.split()[0],
    }
    total = memory_gib()
    if total is not None:
        info["memory_gib"] = round(total, 1)
    return info


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="smaller sizes; finishes in ~10 minutes on 2 CPU cores")
    parser.add_argument("--only", nargs="*", choices=SUITES, help="run only these suites")
    parser.add_argument("--out", type=Path, default=RESULTS / "latest.json", help="where to write the JSON results")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    results = {"machine": machine(), "quick": args.quick, "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
               "suites": {}}
    for name in args.only or SUITES:
        print(f"\n=== {name} ===", flush=True)
        t0 = time.perf_counter()
        try:
            results["suites"][name] = importlib.import_module(f"benchmarks.{name}").run(quick=args.quick)
        except Exception as err:  # a failed suite is reported, the others still run
            logging.exception("benchmark %s failed", name)
            results["suites"][name] = {"error": f"{type(err).__name__}: {err}"}
        results["suites"][name]["wall_s"] = round(time.perf_counter() - t0, 2)
        _write(results, args.out)  # after every suite: an interrupted run keeps what it measured
    results["finished"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    _write(results, args.out)
    print(f"\nwrote {args.out}")
    return 1 if any("error" in r for r in results["suites"].values()) else 0


def _write(results: dict, out: Path) -> None:
    """Replace ``out`` atomically with ``results`` as JSON."""
    text = json.dumps(results, indent=2, default=float)
    atomic_write(out, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


if __name__ == "__main__":
    sys.exit(main())
