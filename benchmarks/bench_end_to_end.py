"""End to end: the main job (``rsmi run`` on the embedded default) and a 3-level Ising decimation flow.

Each job runs in its own subprocess, so its wall time and peak resident memory (``VmHWM`` of that
child, see :mod:`benchmarks.peak`) are its own. Ratios are against parts of the same run: the share of the wall time spent in
each pipeline stage (from the run's ``timings.json``), and for the Ising flow the RSMI training time
against the sampler's.

- ``rsmi run`` on the default config (MiniLM, 200 texts; nothing downloaded) in full and quick mode.
- Ising flow, T = 2.5, 3 levels of b = 2 with shared binarised filters: L = 128 in the full set
  (4 096 + 1 024 + 256 blocks), L = 64 with fewer samples and steps in the quick set.

``python -m benchmarks.bench_end_to_end [--quick]``
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks import suite_main

ISING_FULL = {"L": 128, "n": 4096, "steps": 3000, "levels": 3}
ISING_QUICK = {"L": 64, "n": 2048, "steps": 400, "levels": 3}

_ISING_CHILD = """
import json, sys, time
from experiments.ising2d import sample_ising, exact_correlation_length
from graphs import lattice_graph
from rsmi_nn import run_flow
p = json.loads(sys.argv[1])
t0 = time.perf_counter()
x = sample_ising(p["L"], 2.5, p["n"], seed=0)
t1 = time.perf_counter()
flow = run_flow(x, lattice_graph(p["L"]), levels=p["levels"], block_size=4, out=sys.argv[2], seed=0,
                binarize=True, shared=True, steps=p["steps"], overwrite=True)
t2 = time.perf_counter()
print(json.dumps({"seconds_sampling": t1 - t0, "seconds_flow": t2 - t1, "exact_xi": exact_correlation_length(2.5),
                  "levels": [{"level": r["level"], "num_blocks": r["num_blocks"], "xi": r["correlation_length"],
                              "mi_mean": r["mi_mean"], "steps_run": r["steps_run"]} for r in flow.records]}))
"""


def _child(args: list[str], workdir: Path, root: Path | None = None) -> tuple[float, float, str]:
    """Run ``python args`` to completion in ``root`` (this checkout by default: its packages are the ones
    imported); wall seconds, that child's own peak RSS (GiB), its stdout."""
    out_path, err_path, peak_path = workdir / "child.out", workdir / "child.err", workdir / "child.peak"
    root = root or Path(__file__).resolve().parent.parent
    with open(out_path, "w") as out, open(err_path, "w") as err:
        t0 = time.perf_counter()
        proc = subprocess.run([sys.executable, "-m", "benchmarks.peak", str(peak_path), *args], stdout=out,
                              stderr=err, cwd=root, check=False)
        wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(args[:3])} failed ({proc.returncode}): {err_path.read_text()[-2000:]}")
    return wall, float(peak_path.read_text()), out_path.read_text()


def bench_main_job(out: Path) -> dict:
    """``rsmi run --out OUT`` on the embedded default; seconds per stage from its ``timings.json``."""
    wall, peak, _ = _child(["-m", "rsmi_nn.app.cli", "run", "--out", str(out), "--quiet"], out.parent)
    timings = json.loads((out / "timings.json").read_text())
    stages = {name: t["seconds"] for name, t in timings["stages"].items()}
    flow = json.loads(next(out.rglob("flow.json")).read_text())
    levels = [{key: r.get(key) for key in ("level", "num_nodes", "num_blocks", "correlation_length", "locality",
                                           "locality_chance", "mi_mean")} for r in flow]
    return {"wall_s": round(wall, 2), "peak_rss_gib": round(peak, 3), "stage_seconds": stages,
            "stage_share": {name: round(v / timings["total_seconds"], 3) for name, v in stages.items()},
            "levels": levels}


def bench_ising_flow(out: Path, params: dict) -> dict:
    wall, peak, stdout = _child(["-c", _ISING_CHILD, json.dumps(params), str(out)], out.parent)
    rec = json.loads(stdout.strip().splitlines()[-1])
    return {**params, "wall_s": round(wall, 2), "peak_rss_gib": round(peak, 3),
            "training_over_sampling": round(rec["seconds_flow"] / rec["seconds_sampling"], 2), **rec}


def run(quick: bool = False) -> dict:
    with tempfile.TemporaryDirectory(prefix="rsmi-bench-") as tmp:
        ising = bench_ising_flow(Path(tmp) / "ising", ISING_QUICK if quick else ISING_FULL)
        print(f"  Ising flow L={ising['L']}: {ising['wall_s']:.0f} s, peak {ising['peak_rss_gib']:.2f} GiB "
              f"(sampling {ising['seconds_sampling']:.0f} s, flow {ising['seconds_flow']:.0f} s); xi "
              + " -> ".join(f"{lv['xi']:.2f}" for lv in ising["levels"]) + f" (exact {ising['exact_xi']:.2f} at level 0)",
              flush=True)
        main_job = bench_main_job(Path(tmp) / "default")
        print(f"  rsmi run (default): {main_job['wall_s']:.0f} s, peak {main_job['peak_rss_gib']:.2f} GiB", flush=True)
    return {"rsmi_run_default": main_job, "ising_flow": ising}


def main(argv: list[str] | None = None) -> None:
    suite_main(run, __doc__, "Ising flow at L = 64 instead of 128", argv)


if __name__ == "__main__":
    main()
