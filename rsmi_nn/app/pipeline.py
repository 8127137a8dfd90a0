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

Under ``torchrun`` (an initialised ``torch.distributed`` group) every rank runs this function: the recording
(by inputs), the graph and the flow are sharded by the engine; rank 0 alone reads and writes ``out`` (each rank
writes only its own shards of the store) and takes every decision (skip, resume, refuse), which it sends to the
other ranks; a failure on any rank up to the end of the flow
fails every rank, naming it (:func:`graphs.distributed.agreed`). After the flow rank 0 exports, every rank
evaluates its share of the held-out batches (rank 0 writes), and rank 0 reports alone. ``out`` and a
store source must be on a filesystem every rank sees.
"""

from __future__ import annotations

import logging
import shutil
import time
from pathlib import Path

import torch

from graphs.distributed import agreed, is_writer, on_writer
from graphs.tensor_files import load_samples
from rsmi_nn.app.config import Config, read_run_config
from rsmi_nn.app.files import write_json, write_text
from rsmi_nn.app.graph_stage import graph_stage, load_level0
from rsmi_nn.app.provenance import (
    check_stage,
    code_changed,
    code_version,
    model_digest,
    read_fingerprints,
    record_stage_fingerprint,
)
from rsmi_nn.rundir import FLOW_CONFIG, FLOW_JSON, check_safetensors, discard_levels, read_flow

__all__ = ["flow_stage", "prepare_input", "record_stage", "run_pipeline"]

log = logging.getLogger(__name__)

def _export_changed(out: Path, config: Config) -> bool:
    """Whether the export options differ from those of the run in ``out`` (its ``config.toml``)."""
    if not (out / "config.toml").is_file():
        return False
    try:
        old = Config.from_dict(read_run_config(out), origin=str(out / "config.toml"))
    except (ValueError, TypeError, AttributeError):  # a damaged config.toml: export again
        return True
    return old.export != config.export


def _load_source(config: Config):
    """Load the model source (errors surface here, before anything is written)."""
    from rsmi_nn.app.sources import load_source

    options = dict(config.source.options)
    name = config.source.name
    if name == "minilm" and config.source.max_samples is not None:
        options.setdefault("max_texts", config.source.max_samples)
    if config.source.site is not None:
        if config.source.modules:
            raise ValueError("give either source.site (--site) or source.modules (--modules), not both")
        if not (name == "minilm" or name.startswith("hf:")):
            raise ValueError(f"source.site (--site) applies to hf:<folder> and minilm sources, not {name!r}; "
                             "choose modules with --modules")
        options["site"] = config.source.site
    return load_source(name, **options)


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
        if not is_writer() or (out is not None and (Path(out) / "activations" / "manifest.json").is_file()):
            return "model", None, None  # recorded already, or not rank 0: record_stage loads it where needed
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
            hint = f"; did you mean --lattice {side}?" if side * side == x.shape[1] and side >= 2 else ""
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
    if graph is not None:  # the flow's own checks, before anything is written
        from rsmi_nn.flow import check_flow

        check_flow(x, graph, config.flow, graph_options=config.graph, seed=config.run.seed)
    return "samples", x, graph


def record_stage(config: Config, out: Path, *, progress: bool, store_dir: Path | None = None, source=None):
    """Record the source's activations into ``store_dir`` (default ``out/activations``).

    Skipped when ``out/activations`` is a complete, readable store whose fingerprint matches
    (``rsmi record`` passes its own directory and checks for an existing store itself).
    Returns ``(store, skipped)``. Under ``torchrun`` every rank calls it: rank 0 decides and writes the
    fingerprint, every rank records its share of the inputs (data parallel, :func:`graphs.record_activations`).
    """
    store_dir = Path(store_dir) if store_dir is not None else out / "activations"
    own = store_dir == out / "activations"
    if own and on_writer("checking the activation store", _store_is_current, config, out, store_dir):
        with agreed("opening the activation store"):
            from graphs import ActivationStore

            return ActivationStore.open(store_dir), True
    with agreed("loading the model"):  # rank 0 first: a built-in model may be trained and cached on the way
        if is_writer() and source is None:
            source = _load_source(config)
    with agreed("loading the model"):
        if source is None:
            source = _load_source(config)
    src = config.source
    store = source.record(store_dir, max_samples=src.max_samples, modules=src.modules or None,
                          batch_size=src.batch_size, reduction=src.reduction, device=config.run.device,
                          metadata={"source": src.name, "description": source.description, "kind": source.kind},
                          progress=progress, overwrite=True)
    if own:
        on_writer("fingerprinting the activation store", record_stage_fingerprint, out, "record",
                  _record_inputs(config))
    return store, False


def _store_is_current(config: Config, out: Path, store_dir: Path) -> bool:
    """Whether the recorded store may be reused: its fingerprint matches and every shard is readable."""
    return check_stage(out, "record", _record_inputs(config), remove=repr(str(store_dir))) and \
        _readable_store(store_dir) is not None


def _record_inputs(config: Config) -> dict:
    """What the record stage reads: the source section (but its batch size) and the model's files."""
    source = config.stage_key("source")["source"]
    source.pop("batch_size")
    return {"source": source, "model": model_digest(config.source.name)}


def _readable_store(store_dir: Path):
    """The store in ``store_dir`` when its manifest and every shard are readable, else None (re-record)."""
    from graphs import ActivationStore

    try:
        store = ActivationStore.open(store_dir)
        for shard in store.manifest["shards"]:
            check_safetensors(store_dir / shard["file"])
    except (OSError, ValueError) as err:
        log.warning("the activation store %s is damaged (%s); recording it again", store_dir, err)
        return None
    return store


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
    ``out/timings.json``. Inside a ``torch.distributed`` group every rank calls it (see the module's notes).

    Raises
    ------
    ValueError if ``out`` holds a run with another configuration, or for a bad configuration.
    :class:`graphs.distributed.RankFailed` on the ranks whose own work succeeded when another rank failed.
    """
    config = (config or Config()).copy()
    out = check_out_dir(out)
    progress = (not config.run.quiet) if progress is None else progress
    fresh = on_writer("looking at the run directory", lambda: not out.exists() or not any(out.iterdir()))
    try:
        return _run_stages(config, out, progress and is_writer(), report)
    except Exception:
        if is_writer() and fresh and out.is_dir() and not read_fingerprints(out):  # nothing finished: leave no folder
            shutil.rmtree(out, ignore_errors=True)
        raise


def check_out_dir(out: str | Path) -> Path:
    """``out`` as a Path, refused when empty or an existing file."""
    if str(out).strip() == "":
        raise ValueError("--out is empty; pass the directory to write the run into")
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {str(out)!r} is a file; pass a directory")
    return out


def _prepare_out(config: Config, out: Path) -> bool:
    """Rank 0's look at ``out`` before the stages: discard what another code version made; returns whether to export again."""
    redo_export = _export_changed(out, config)
    older = code_changed(out)
    if older is not None:  # results of another version of the code are recomputed, the flow's levels too
        log.warning("%s was made by rsmi-nn %s (now %s): recomputing every stage", out, older, code_version())
        discard_levels(out)
        (out / FLOW_CONFIG).unlink(missing_ok=True)
        redo_export = True
    out.mkdir(parents=True, exist_ok=True)
    return redo_export


def _read_flow_if_any(out: Path) -> list | None:
    return read_flow(out) if (out / FLOW_JSON).is_file() else None


def _write_provenance(config: Config, out: Path) -> None:
    """What the finished flow was made with (written only now: a refused or failed run leaves the old one)."""
    from rsmi_nn import __version__
    from rsmi_nn.app.config import versions

    write_text(out / "config.toml", config.to_toml())
    write_json(out / "versions.json", {**versions(), "rsmi_nn.__version__": __version__})


def _run_stages(config: Config, out: Path, progress: bool, report: bool) -> Path:
    """The stages of :func:`run_pipeline`, each skipped when its fingerprinted output is complete.

    Rank 0 decides and writes (:func:`graphs.distributed.on_writer`); graph and flow run on every rank.
    """
    with agreed("checking the input"):
        kind, data, given_graph = prepare_input(config, out)
    redo_export = on_writer("preparing the run directory", _prepare_out, config, out)

    timings: dict[str, dict] = {}
    t_start = time.perf_counter()

    def done(stage: str, t0: float, skipped: bool) -> None:
        timings[stage] = {"seconds": round(time.perf_counter() - t0, 3), "skipped": skipped}
        log.info("stage %-7s %s in %.1f s", stage, "skipped (already complete)" if skipped else "done",
                 timings[stage]["seconds"])
        if is_writer():
            write_json(out / "timings.json", {"stages": timings,
                                              "total_seconds": round(time.perf_counter() - t_start, 3)})

    t0 = time.perf_counter()
    skipped = True
    if kind == "model":  # every rank records its share of the inputs (one rank: all of them)
        data, skipped = record_stage(config, out, progress=progress, source=data)
    done("record", t0, skipped)

    t0 = time.perf_counter()
    graph, skipped = graph_stage(config, out, data, given=given_graph, progress=progress)
    done("graph", t0, skipped)

    t0 = time.perf_counter()
    with agreed("reading the level-0 samples"):
        x = load_level0(data, graph)
    before = on_writer("reading flow.json", _read_flow_if_any, out)
    result = flow_stage(config, out, x, graph, progress=progress)
    after = on_writer("reading flow.json", _read_flow_if_any, out)
    if after is None:
        reason = getattr(result, "stopped", None) or "no level finished"
        raise ValueError(f"the flow produced no level ({reason}); use a smaller flow.block_size or more units")
    flow_changed = before != after
    done("flow", t0, not flow_changed and before is not None)
    on_writer("writing config.toml and versions.json", _write_provenance, config, out)

    if not report:
        return out
    _report_stages(config, out, kind, redo_export, flow_changed, done)
    if not is_writer():
        return out
    log.info("finished: %d level(s) in %.1f s; report: %s", len(after), time.perf_counter() - t_start,
             out / "report.html")
    return out


def _report_stages(config: Config, out: Path, kind: str, redo_export: bool, flow_changed: bool, done) -> None:
    """Export, evaluation and report, each skipped when current. Under ``torchrun`` rank 0 exports and reports
    alone; every rank evaluates (sharded by held-out batches, :func:`rsmi_nn.app.evaluation.evaluate_run`)."""
    from rsmi_nn.app.evaluation import evaluate_run, evaluation_is_current
    from rsmi_nn.app.evaluation.errors import NotEvaluable
    from rsmi_nn.app.report import write_report

    t0 = time.perf_counter()
    fresh_export = on_writer("exporting", _export, config, out, redo_export or flow_changed)
    done("export", t0, not fresh_export)

    t0 = time.perf_counter()
    fresh_eval = kind == "model" and config.evaluate.enabled and on_writer(
        "checking the evaluation", lambda: flow_changed or not evaluation_is_current(out, config.evaluate))
    if fresh_eval:  # does the model notice? (rsmi_nn.app.evaluation; --no-evaluate skips it)
        try:
            evaluate_run(out, config.evaluate, device=config.run.device)
        except NotEvaluable as err:  # no held-out input, or no logits / embedding to compare: the run stands
            log.warning("evaluation skipped: %s", err)
            fresh_eval = False
    done("evaluate", t0, not fresh_eval)
    if not is_writer():
        return

    t0 = time.perf_counter()
    fresh_report = fresh_export or fresh_eval or not (out / "report.html").is_file()
    if fresh_report:
        write_report(out, max_cards=config.export.max_cards, top_units=config.export.top_units,
                     seed=config.run.seed)
    done("report", t0, not fresh_report)


def _export(config: Config, out: Path, redo: bool) -> bool:
    """Export the run unless it is current; returns whether it exported."""
    from rsmi_nn.app.export import export_run, is_exported

    fresh = redo or not is_exported(out)
    if fresh:
        export_run(out, top_examples=config.export.top_examples, top_units=config.export.top_units,
                   graphml=config.export.graphml)
    return fresh
