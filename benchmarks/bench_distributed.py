"""One process against two (``torchrun``) on this machine: the same ``rsmi run``, the same bytes, the wall time.

The job: Gaussian-field samples on an L×L lattice saved as a ``samples:`` source (no lattice given, so the
level-0 graph is built from the samples: the band-sharded ``build_graph``), then a 2-level flow of 2×2-sized
blocks with a fixed number of steps (early stopping off, so the work does not depend on the run: the
block-sharded RSMI step), export and report (rank 0 alone). Three runs, each in its own process tree:

- ``one_thread``:  ``python -m rsmi_nn.cli run`` with ``OMP_NUM_THREADS=1``;
- ``one_process``: the same with every core's threads (``OMP_NUM_THREADS`` = CPU count);
- ``two_ranks``:   ``torchrun --standalone --nproc_per_node 2 -m rsmi_nn.cli run`` (one thread per rank).

The recording (data parallel under torchrun) is timed apart: ``rsmi record --source minilm`` over the bundled
corpus (MiniLM's six MLP layers, 9 216 units per token; batches of 16 texts, so 7 windows of 64 to share) in the
same three ways; its wall time includes loading
the model in each process; ``same_store_samples`` checks the three stores hold the same samples, bit for bit.

Ratios: ``one_process`` / ``two_ranks`` (what a user gains by launching two ranks instead of threads) and
``one_thread`` / ``two_ranks`` (the scaling of the sharded work), for the whole run and for the graph and
flow stages (from each run's ``timings.json``); ``same_flow_json`` checks that all three wrote the same bytes,
``one_thread_flow_json_as_two_ranks`` the two of one thread per process (the only pair that must agree where
``graphs.distributed.thread_count_free_blas`` is False: MKL's products there depend on the thread count).

``python -m benchmarks.bench_distributed [--quick]``  (quick: L = 24, 1 024 samples, 60 steps — about a minute)
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks import suite_main

FULL = {"L": 48, "n": 4096, "steps": 300, "texts": 400, "text_batch": 16}
QUICK = {"L": 24, "n": 1024, "steps": 60, "texts": 64, "text_batch": 8}
FIELD_MASS = 0.3
STAGES = ("graph", "flow")

CONFIG = """[source]
name = "samples:{samples}"

[graph]
k = 8

[flow]
levels = 2
block_size = 4
steps = {steps}
patience = 1000000
eval_every = {steps}

[evaluate]
enabled = false

[run]
seed = 0
device = "cpu"
quiet = true
"""


def _write_job(p: dict, workdir: Path) -> Path:
    """The samples file and the config of the job; returns the config's path."""
    import numpy as np

    from experiments.fields import gaussian_field_on
    from graphs import lattice_graph

    x = gaussian_field_on(lattice_graph(p["L"]), p["n"], mass=FIELD_MASS, seed=0)
    samples = workdir / "samples.npy"
    np.save(samples, x.numpy().astype("float32"))
    config = workdir / "job.toml"
    config.write_text(CONFIG.format(samples=samples, steps=p["steps"]))
    return config


def _run(command: list[str], threads: int, out: Path) -> dict:
    """Run one job to completion; its wall seconds and the stage seconds of its ``timings.json``."""
    wall = _wall(command, threads, out)
    stages = json.loads((out / "timings.json").read_text())["stages"]
    return {"wall_s": wall, **{f"{s}_s": stages[s]["seconds"] for s in STAGES}}


def _record(p: dict, cores: int, workdir: Path) -> dict:
    """``rsmi record`` of MiniLM over ``p["texts"]`` texts: one thread, one process, two ranks; wall s and ratios."""
    from graphs import ActivationStore

    args = ["-m", "rsmi_nn.cli", "record", "--source", "minilm", "--max-samples", str(p["texts"]), "--batch-size",
            str(p["text_batch"]), "--quiet"]  # ranks share whole windows of 4 batches: 7 (2 quick) windows
    two = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", *args]
    walls = {}
    for name, command, threads in (("one_thread", [sys.executable, *args], 1),
                                   ("one_process", [sys.executable, *args], cores), ("two_ranks", two, 1)):
        walls[name] = _wall(command, threads, workdir / f"record_{name}")
    samples = {ActivationStore.open(workdir / f"record_{name}").to_tensor().numpy().tobytes() for name in walls}
    store = ActivationStore.open(workdir / "record_two_ranks")
    out = {"texts": p["texts"], "batch_size": p["text_batch"], "samples": store.num_samples, "units": store.num_units,
           "wall_s": walls,
           "same_store_samples": len(samples) == 1, "shards_two_ranks": len(store.manifest["shards"])}
    for base in ("one_process", "one_thread"):
        out[f"{base}_over_two_ranks"] = round(walls[base] / max(walls["two_ranks"], 1e-9), 2)
    print(f"  record ({p['texts']} texts, {store.num_samples} tokens): " + "   ".join(
        f"{k} {v:.1f} s" for k, v in walls.items()) + f"; same samples: {out['same_store_samples']}", flush=True)
    return out


def _wall(command: list[str], threads: int, out: Path) -> float:
    """Wall seconds of one command run to completion with ``threads`` threads per process."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    root = Path(__file__).resolve().parent.parent
    t0 = time.perf_counter()
    proc = subprocess.run([*command, "--out", str(out)], cwd=root, env=env, capture_output=True, text=True,
                          check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(command[:8])} failed ({proc.returncode}): {proc.stderr[-2000:]}")
    return round(time.perf_counter() - t0, 2)


def run(quick: bool = False) -> dict:
    """Time the job in one thread, one process of every core's threads, and two ranks; returns the ratios."""
    p = QUICK if quick else FULL
    cores = os.cpu_count() or 1
    with tempfile.TemporaryDirectory(prefix="bench_distributed_") as tmp:
        workdir = Path(tmp)
        config = str(_write_job(p, workdir))
        one = [sys.executable, "-m", "rsmi_nn.cli", "run", config]
        two = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               "-m", "rsmi_nn.cli", "run", config]
        runs = {"one_thread": _run(one, 1, workdir / "one_thread"),
                "one_process": _run(one, cores, workdir / "one_process"),
                "two_ranks": _run(two, 1, workdir / "two_ranks")}
        flows = {name: (workdir / name / "flow.json").read_bytes() for name in runs}
        record = _record(p, cores, workdir)
    from graphs.distributed import thread_count_free_blas
    job = {k: v for k, v in p.items() if k not in ("texts", "text_batch")}
    result = {"job": {**job, "units": p["L"] ** 2, "levels": 2, "block_size": 4}, "cpu_count": cores, "runs": runs,
              "same_flow_json": len(set(flows.values())) == 1,
              "one_thread_flow_json_as_two_ranks": flows["one_thread"] == flows["two_ranks"],
              "thread_count_free_blas": thread_count_free_blas(), "record": record}
    for base in ("one_process", "one_thread"):
        for key in ("wall_s", *(f"{s}_s" for s in STAGES)):
            result[f"{base}_over_two_ranks_{key[:-2]}"] = round(runs[base][key] / max(runs["two_ranks"][key], 1e-9), 2)
    for name, r in runs.items():
        print(f"  {name:<12} wall {r['wall_s']:7.1f} s   graph {r['graph_s']:6.2f} s   flow {r['flow_s']:7.1f} s",
              flush=True)
    print(f"  one process / two ranks: wall {result['one_process_over_two_ranks_wall']}x, flow "
          f"{result['one_process_over_two_ranks_flow']}x; same flow.json: {result['same_flow_json']} (one thread and two "
          f"ranks: {result['one_thread_flow_json_as_two_ranks']}; products free of the thread count on this CPU: "
          f"{result['thread_count_free_blas']})", flush=True)
    return result


def main(argv: list[str] | None = None) -> None:
    suite_main(run, __doc__, "L = 24, 1 024 samples, 60 steps", argv)


if __name__ == "__main__":
    main()
