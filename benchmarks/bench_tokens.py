"""Token scale: wall time and peak resident memory of every stage of a MiniLM run over ~100 000+ tokens.

``python -m benchmarks.bench_tokens [--out DIR] [--max-samples N] [--config NAME]`` runs the shipped
``minilm-tokens`` config stage by stage in this process (record → graph → level-0 samples → flow →
export) and reports, per stage, the seconds and the peak resident memory *of that stage*: the
kernel's high-water mark (``VmHWM``) is reset before each stage by writing ``5`` to
``/proc/self/clear_refs`` (Linux), so a stage's figure is its own, not the largest so far.
``--max-samples`` scales the number of texts, to check which stage's memory grows with the
number of tokens. Results go to ``OUT/bench_tokens.json``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from benchmarks.peak import peak_rss_gib


def _reset_peak() -> bool:
    """Reset this process's ``VmHWM`` to its current RSS; False where the kernel does not allow it."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _rss_gib() -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 2**20
    return float("nan")


def run(config_name: str, out: Path, max_samples: int | None, device: str, export: bool) -> dict:
    import torch

    from rsmi_nn.app.config import load_config
    from rsmi_nn.app.graph_stage import graph_stage, load_level0
    from rsmi_nn.app.pipeline import flow_stage, prepare_input, record_stage

    cfg = load_config(config_name)
    if max_samples is not None:
        cfg.set("source.max_samples", max_samples)
    cfg.set("run.device", device)
    out.mkdir(parents=True, exist_ok=True)
    stages: dict[str, dict] = {}
    state: dict = {}

    def stage(name: str, fn) -> None:
        resettable = _reset_peak()
        t0 = time.perf_counter()
        fn()
        stages[name] = {"seconds": round(time.perf_counter() - t0, 1), "peak_gib": round(peak_rss_gib(), 3),
                        "rss_after_gib": round(_rss_gib(), 3), "peak_is_stage_own": resettable}
        print(f"{name:>8}: {stages[name]['seconds']:8.1f} s   peak {stages[name]['peak_gib']:.2f} GiB", flush=True)

    def record():
        _, source, _ = prepare_input(cfg)
        state["store"], _ = record_stage(cfg, out, progress=False, source=source)

    def graph():
        state["graph"], _ = graph_stage(cfg, out, state["store"], progress=False)

    def level0():
        state["x"] = load_level0(state["store"], state["graph"])

    def flow():
        flow_stage(cfg, out, state["x"], state["graph"], progress=False)
        del state["x"]

    stage("record", record)
    stage("graph", graph)
    stage("level0", level0)
    stage("flow", flow)
    if export:
        from rsmi_nn.app.export import export_run

        stage("export", lambda: export_run(out, top_examples=cfg.export.top_examples, top_units=cfg.export.top_units,
                                           graphml=cfg.export.graphml))
    store = state["store"]
    result = {"config": config_name, "max_samples": cfg.source.max_samples, "num_texts": store.manifest["num_inputs"],
              "num_tokens": store.num_samples, "num_units": store.num_units, "device": device,
              "threads": torch.get_num_threads(), "stages": stages,
              "total_seconds": round(sum(s["seconds"] for s in stages.values()), 1),
              "peak_gib": max(s["peak_gib"] for s in stages.values())}
    (out / "bench_tokens.json").write_text(json.dumps(result, indent=2))
    return result


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default="minilm-tokens", help="shipped config name or TOML file")
    p.add_argument("--out", default="runs/bench-tokens", help="run directory (a fresh one: stages are not resumed)")
    p.add_argument("--max-samples", type=int, default=None, help="texts to record (default: the config's)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--no-export", action="store_true", help="stop after the flow")
    args = p.parse_args(argv)
    res = run(args.config, Path(args.out), args.max_samples, args.device, not args.no_export)
    print(f"{res['num_tokens']} tokens x {res['num_units']} units: {res['total_seconds']} s, "
          f"peak {res['peak_gib']:.2f} GiB")


if __name__ == "__main__":
    main()
