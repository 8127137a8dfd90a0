"""The whole job in one call: record → graph → flow → export → report, resumable stage by stage.

``run_pipeline(config, out)`` writes into ``out``::

    config.toml, versions.json    the resolved configuration and the package versions used
    activations/                  the activation store (manifest + shards)        [model sources]
    graph.safetensors, graph.json the level-0 activation graph
    flow.json, flow_config.json, levels/NNN/   the decimation flow (``run_flow``)
    feature_maps/, graphs/, examples/          the export (``export_run``)
    plots/, report.html                        the report (``write_report``)
    timings.json                  seconds per stage (and which stages were skipped)

A stage whose complete output is already there is skipped, so re-running the same command
after an interruption resumes where it stopped (the flow itself resumes from its last finished
level). A directory holding a run with a *different* configuration is refused rather than mixed.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import torch

from graphs.tensor_files import load_samples
from rsmi_nn.app.config import Config, read_run_config
from rsmi_nn.app.files import write_json, write_text
from rsmi_nn.rundir import FLOW_JSON, read_flow

__all__ = ["flow_stage", "graph_stage", "load_level0", "prepare_input", "record_stage", "run_pipeline"]

log = logging.getLogger(__name__)

#: config sections whose change invalidates the recorded activations / graph / flow
_RESULT_SECTIONS = ("source", "graph", "flow")


def _check_existing(out: Path, config: Config) -> bool:
    """Refuse a directory holding another run; returns True when export/report must be redone."""
    path = out / "config.toml"
    if not path.is_file():
        return False
    try:
        data = read_run_config(out)
        data.get("run", {}).pop("device", None)  # where it ran is not what it computed (a CUDA run resumes on CPU)
        old = Config.from_dict(data, origin=str(path))
    except (ValueError, TypeError, AttributeError):  # TOMLDecodeError is a ValueError
        raise ValueError(f"{str(path)!r} is unreadable; pass a new --out directory or delete {str(out)!r}") from None
    for section in _RESULT_SECTIONS:
        a, b = old.stage_key(section)[section], config.stage_key(section)[section]
        if section == "source":  # the recording batch size does not change the result
            a.pop("batch_size"), b.pop("batch_size")
        if a != b:
            key = next(k for k in b if a.get(k) != b.get(k))
            raise ValueError(
                f"{str(out)!r} already holds a run with {section}.{key}={a.get(key)!r} (now {b.get(key)!r}); "
                "pass a new --out directory or delete the old one"
            )
    if old.run.seed != config.run.seed:
        raise ValueError(
            f"{str(out)!r} already holds a run with run.seed={old.run.seed} (now {config.run.seed}); "
            "pass a new --out directory or delete the old one"
        )
    return old.export != config.export


def _load_source(config: Config):
    """Load the model source (errors surface here, before anything is written)."""
    from rsmi_nn.app.sources import load_source

    options = dict(config.source.options)
    if config.source.name == "minilm" and config.source.max_samples is not None:
        options.setdefault("max_texts", config.source.max_samples)
    return load_source(config.source.name, **options)


def prepare_input(config: Config, out: str | Path | None = None):
    """Read and check a raw-samples or store source before anything is written.

    Returns ``(kind, data, graph)``: ``("samples", x [N, U], graph or None)`` for
    ``samples:<file>`` (with option ``lattice = L`` or ``graph = <file>``), ``("store", store, None)``
    for ``store:<dir>``, ``("model", None, None)`` for a model source (recorded later).
    """
    from estimators.validation import check_samples

    name, opts = config.source.name, config.source.options
    if name.startswith("store:"):
        from graphs import ActivationStore

        return "store", ActivationStore.open(name[len("store:"):]), None
    if not name.startswith("samples:"):
        if "lattice" in opts or "graph" in opts:
            raise ValueError("source options 'lattice'/'graph' apply to raw samples only (source.name = 'samples:<file>')")
        if out is not None and (Path(out) / "activations" / "manifest.json").is_file():
            return "model", None, None  # recorded already: the record stage is skipped
        return "model", _load_source(config), None
    file = name[len("samples:"):]
    x = load_samples(file, key=opts.get("key"))
    if config.source.max_samples is not None:
        x = x[: config.source.max_samples]
    x = check_samples(x, name=f"samples in {file!r}")
    graph = None
    if "lattice" in opts and "graph" in opts:
        raise ValueError("give either a lattice or a graph file for raw samples, not both")
    if "lattice" in opts:
        from graphs import lattice_graph

        L = opts["lattice"]
        if isinstance(L, bool) or not isinstance(L, int) or L < 2:
            raise ValueError(f"lattice size must be an integer >= 2, got {L!r}")
        if x.shape[1] != L * L:
            side = round(x.shape[1] ** 0.5)
            hint = f"; did you mean --lattice {side}?" if side * side == x.shape[1] else ""
            raise ValueError(
                f"samples in {file!r} have {x.shape[1]} columns but --lattice {L} needs L*L = {L * L}" + hint
            )
        graph = lattice_graph(L, periodic=bool(opts.get("periodic", True)))
    elif "graph" in opts:
        from graphs import ActivationGraph

        graph = ActivationGraph.load(opts["graph"])
        if x.shape[1] != graph.num_nodes:
            raise ValueError(
                f"samples in {file!r} have {x.shape[1]} columns but the graph {str(opts['graph'])!r} has "
                f"{graph.num_nodes} nodes; pass samples with one column per node (node order)"
            )
    if graph is not None and graph.num_nodes < 2 * config.flow.block_size:
        raise ValueError(
            f"{graph.num_nodes} units are too few for flow.block_size={config.flow.block_size} (a level needs at "
            f"least 2 x block_size units); use a smaller block size"
        )
    return "samples", x, graph


def record_stage(config: Config, out: Path, *, progress: bool, store_dir: Path | None = None, source=None):
    """Record the source's activations into ``store_dir`` (default ``out/activations``).

    Skipped when that store is already complete (``rsmi record`` passes its own directory and
    checks for an existing store itself). Returns ``(store, skipped)``.
    """
    from graphs import ActivationStore

    store_dir = Path(store_dir) if store_dir is not None else out / "activations"
    if (store_dir / "manifest.json").is_file() and store_dir == out / "activations":
        return ActivationStore.open(store_dir), True
    src = config.source
    source = _load_source(config) if source is None else source
    store = source.record(store_dir, max_samples=src.max_samples, modules=src.modules or None,
                          batch_size=src.batch_size, reduction=src.reduction, device=config.run.device,
                          metadata={"source": src.name, "description": source.description, "kind": source.kind},
                          progress=progress, overwrite=True)
    return store, False


def graph_stage(config: Config, out: Path, x, *, given=None, progress: bool):
    """Build (or load) the level-0 graph ``out/graph``; ``x`` is a store or a ``[N, U]`` tensor."""
    from graphs import ActivationGraph, build_graph

    path = out / "graph"
    if (out / "graph.json").is_file() and (out / "graph.safetensors").is_file():
        return ActivationGraph.load(path), True
    if given is not None:
        graph = given
    else:
        graph = build_graph(x, **config.graph.build_kwargs(), device=config.run.device, progress=progress)
    graph.save(path)
    return graph, False


def load_level0(x, graph) -> torch.Tensor:
    """The level-0 samples ``[N, U]`` in the graph's node order (units the graph dropped are left out)."""
    if isinstance(x, torch.Tensor):
        unit_index = graph.metadata.get("unit_index")
        if unit_index is not None and x.shape[1] == graph.metadata.get("num_input_units", -1):
            # build_graph left constant units out: keep the columns that became nodes
            return x[:, torch.as_tensor(unit_index, dtype=torch.long)]
        if x.shape[1] != graph.num_nodes:
            raise ValueError(
                f"the samples have {x.shape[1]} units but the graph has {graph.num_nodes} nodes; "
                "pass samples with one column per graph node"
            )
        return x
    if list(x.names) == list(graph.names):
        return x.to_tensor()
    return x.to_tensor(units=graph.names)


def flow_stage(config: Config, out: Path, x: torch.Tensor, graph, *, progress: bool):
    """Run (or resume) the decimation flow into ``out``."""
    from rsmi_nn.flow import run_flow

    return run_flow(x, graph, config.flow, graph_options=config.graph, out=out, seed=config.run.seed,
                    device=config.run.device, progress=progress)


def run_pipeline(config: Config | None, out: str | Path, *, progress: bool | None = None,
                 report: bool = True) -> Path:
    """Run the whole job described by ``config`` into the directory ``out``; returns ``out``.

    Stages: record (model sources only) → graph → flow → export → report; each is skipped when its
    complete output exists, so the same call resumes an interrupted run. Seconds per stage go to
    ``out/timings.json``.

    Raises
    ------
    ValueError if ``out`` holds a run with another configuration, or for a bad configuration.
    """
    from rsmi_nn import __version__
    from rsmi_nn.app.config import versions
    from rsmi_nn.app.export import export_run, is_exported
    from rsmi_nn.app.report import write_report

    config = (config or Config()).copy()
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {str(out)!r} is a file; pass a directory")
    progress = (not config.run.quiet) if progress is None else progress
    redo_export = _check_existing(out, config)
    kind, data, given_graph = prepare_input(config, out)
    out.mkdir(parents=True, exist_ok=True)
    write_text(out / "config.toml", config.to_toml())
    write_json(out / "versions.json", {**versions(), "rsmi_nn.__version__": __version__})

    timings: dict[str, dict] = {}
    t_start = time.perf_counter()

    def done(stage: str, t0: float, skipped: bool) -> None:
        timings[stage] = {"seconds": round(time.perf_counter() - t0, 3), "skipped": skipped}
        log.info("stage %-7s %s in %.1f s", stage, "skipped (already complete)" if skipped else "done",
                 timings[stage]["seconds"])
        write_json(out / "timings.json", {"stages": timings, "total_seconds": round(time.perf_counter() - t_start, 3)})

    t0 = time.perf_counter()
    skipped = True
    if kind == "model":
        data, skipped = record_stage(config, out, progress=progress, source=data)
    done("record", t0, skipped)

    t0 = time.perf_counter()
    graph, skipped = graph_stage(config, out, data, given=given_graph, progress=progress)
    done("graph", t0, skipped)

    t0 = time.perf_counter()
    x = load_level0(data, graph)
    before = read_flow(out) if (out / FLOW_JSON).is_file() else None
    result = flow_stage(config, out, x, graph, progress=progress)
    if not (out / FLOW_JSON).is_file():
        reason = getattr(result, "stopped", None) or "no level finished"
        raise ValueError(f"the flow produced no level ({reason}); use a smaller flow.block_size or more units")
    after = read_flow(out)
    flow_changed = before != after
    done("flow", t0, not flow_changed and before is not None)

    if not report:
        return out
    t0 = time.perf_counter()
    fresh_export = redo_export or flow_changed or not is_exported(out)
    if fresh_export:
        export_run(out, top_examples=config.export.top_examples, top_units=config.export.top_units,
                   graphml=config.export.graphml)
    done("export", t0, not fresh_export)

    t0 = time.perf_counter()
    fresh_report = fresh_export or not (out / "report.html").is_file()
    if fresh_report:
        write_report(out, max_cards=config.export.max_cards, top_units=config.export.top_units,
                     seed=config.run.seed)
    done("report", t0, not fresh_report)
    log.info("finished: %d level(s) in %.1f s; report: %s", len(after), time.perf_counter() - t_start,
             out / "report.html")
    return out
