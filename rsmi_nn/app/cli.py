"""The ``rsmi`` command: record activations, build graphs, run decimation flows, export, report.

Sub-commands (``rsmi <command> --help`` for every flag)::

    rsmi run [CONFIG] --out DIR          the whole pipeline from a TOML config (default: embedded)
    rsmi record --source NAME --out DIR  activations of a model into a store
    rsmi graph  --store DIR --out FILE   the activation graph of a store (or of a samples file)
    rsmi flow   --samples FILE --lattice L --out DIR     decimation flow on raw samples / a store
    rsmi export RUN_DIR                  feature maps, graphs, top examples of a finished flow
    rsmi evaluate RUN_DIR                does the model notice? splicing each level back, against baselines
    rsmi report RUN_DIR                  the self-contained report.html
    rsmi compare RUN_A RUN_B --out DIR   matching, GW distances and flow invariants of two or more runs
    rsmi encode RUN_DIR --out FILE       coarse variables of every level for a store's (or samples') activations

A user mistake (unknown model, missing file, bad config key, wrong shapes) ends with one line
``rsmi: error: ...`` on stderr and exit status 1 (2 for a malformed command line); ``--debug``
shows the traceback instead.

Several processes: ``torchrun --nproc_per_node N -m rsmi_nn.cli run ...`` (or ``-m rsmi_nn.app.cli``)
runs ``run``, ``record``, ``flow`` and ``graph`` on N ranks (the process group comes from torchrun's environment);
every rank that fails says so with its rank, and rank 0 alone prints and writes.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from pathlib import Path

from rsmi_nn.app.cli_parser import UsageError, apply_flags, build_parser
from rsmi_nn.app.cli_process import configure_logging, error_line, rank, restored_logging, start, stop

__all__ = ["build_parser", "main"]

log = logging.getLogger("rsmi_nn.app.cli")

EXIT_ERROR = 1
EXIT_USAGE = 2


# ----------------------------------------------------------------------------------------------
# commands
# ----------------------------------------------------------------------------------------------
def _configured(cfg, args):
    """``cfg`` with the command line's flags applied, and logging set from it; returns ``cfg``."""
    apply_flags(cfg, args)
    configure_logging(cfg.run.quiet, args.debug)
    return cfg


def _cmd_run(args) -> int:
    from rsmi_nn.app.config import builtin_configs, load_config
    from rsmi_nn.app.pipeline import run_pipeline

    config_path = args.config
    source = getattr(args, "source.name")
    if config_path is None and source is not None and source in builtin_configs():
        config_path = source  # `rsmi run --source minilm` uses the shipped minilm.toml
    cfg = load_config(config_path)
    own_source = config_path is None and source is not None and source != cfg.source.name
    if own_source:  # a source without a shipped config keeps its own defaults, not the default run's [source]
        from rsmi_nn.app.config import SourceOptions

        cfg.source = SourceOptions()
    apply_flags(cfg, args, args.overrides)
    if args.print_config:
        sys.stdout.write(cfg.to_toml())
        return 0
    configure_logging(cfg.run.quiet, args.debug)
    if own_source and not cfg.run.quiet:
        sys.stdout.write(_inherited_note(source))
    t0 = time.perf_counter()
    out = run_pipeline(cfg, args.out)
    _print_summary(out, time.perf_counter() - t0)
    return 0


def _inherited_note(source: str) -> str:
    """What a run without CONFIG takes from the embedded default config (printed before it starts)."""
    import tomllib

    from rsmi_nn.app.config import default_config_path

    data = tomllib.loads(default_config_path().read_text())
    keys = [f"{section}.{key}={value}" for section, values in data.items() if section != "source"
            for key, value in values.items()]
    return (f"no CONFIG given: [source] takes {source}'s own defaults (all its inputs; --max-samples to cut); "
            f"inherited from the embedded default config: {', '.join(keys)} (--print-config shows all)\n")


def _flow_source(args) -> tuple[str, dict]:
    """``source.name`` and ``source.options`` of ``rsmi flow``'s raw samples or store."""
    if args.open and args.lattice is None:
        raise UsageError("--open only applies together with --lattice")
    if args.store is not None:
        if args.lattice is not None:
            raise UsageError("--lattice applies to --samples, not to an activation --store")
        if args.graph is not None:
            raise UsageError("--graph with --store is not supported; pass the store's samples with --samples")
        return f"store:{args.store}", {}
    if args.lattice is None and args.graph is None:
        raise UsageError("raw --samples need a geometry: pass --lattice L or --graph GRAPH_FILE")
    options = {} if args.key is None else {"key": args.key}
    if args.lattice is not None:
        options.update(lattice=args.lattice, periodic=not args.open)
    else:
        options["graph"] = args.graph
    return f"samples:{args.samples}", options


def _cmd_flow(args) -> int:
    from rsmi_nn.app.config import Config
    from rsmi_nn.app.pipeline import run_pipeline

    name, options = _flow_source(args)
    cfg = Config()
    cfg.set("source.name", name, origin="--samples")
    cfg.set("source.options", options, origin="--samples")
    cfg = _configured(cfg, args)
    t0 = time.perf_counter()
    out = run_pipeline(cfg, args.out, report=not args.no_report)
    _print_summary(out, time.perf_counter() - t0)
    return 0


def _cmd_record(args) -> int:
    from rsmi_nn.app.config import Config
    from rsmi_nn.app.pipeline import prepare_input, record_stage

    if getattr(args, "source.name") is None:
        raise UsageError("rsmi record needs --source NAME (digits-mlp, minilm, hf:<folder>, or python:<module>:<factory>)")
    from rsmi_nn.app.pipeline import check_out_dir

    cfg = _configured(Config(), args)
    out = check_out_dir(args.out)
    if (out / "manifest.json").exists() and not args.overwrite:
        raise ValueError(f"{str(out)!r} already holds an activation store; pass --overwrite or another --out")
    _, source, _ = prepare_input(cfg)
    store, _ = record_stage(cfg, out, progress=not cfg.run.quiet, store_dir=out, source=source)
    print(f"recorded {store.num_samples} samples x {store.num_units} units into {out}")
    return 0


def _cmd_graph(args) -> int:
    from graphs import build_graph
    from rsmi_nn.app.config import Config

    cfg = _configured(Config(), args)
    out = _graph_out(args.out)
    if args.samples is not None:
        from estimators.validation import check_samples
        from graphs.tensor_files import load_samples

        x = check_samples(load_samples(args.samples, key=args.key), name=f"samples in {args.samples!r}")
    else:
        from graphs import ActivationStore

        x = ActivationStore.open(args.store)
    graph = build_graph(x, **cfg.graph.build_kwargs(), device=cfg.run.device,
                        progress=not cfg.run.quiet and rank() == 0)
    from graphs.distributed import on_writer

    st, js = on_writer("saving the graph", graph.save, out)
    if rank() == 0:
        print(f"graph: {graph.num_nodes} nodes, {graph.num_edges // 2} edges -> {st}, {js}")
    return 0


def _graph_out(out: str) -> Path:
    """The graph's path stem: ``--out DIR/`` (or an existing folder) means ``DIR/graph.safetensors``/``.json``."""
    if str(out).strip() == "":
        raise ValueError("--out is empty; pass the graph's file name (e.g. --out graph)")
    if str(out).endswith(("/", os.sep)) or Path(out).is_dir():
        return Path(out) / "graph"
    return Path(out)


def _cmd_export(args) -> int:
    from rsmi_nn.app.config import Config
    from rsmi_nn.app.export import export_run

    cfg = _configured(Config(), args)
    index = export_run(args.run_dir, top_examples=cfg.export.top_examples, top_units=cfg.export.top_units,
                       graphml=cfg.export.graphml, store=args.store)
    print(f"exported {args.run_dir} -> {index.parent}")
    if args.format == "neuronpedia":
        from rsmi_nn.app.export_neuronpedia import export_neuronpedia

        print(f"neuronpedia: {export_neuronpedia(args.run_dir).parent}")
    return 0


def _cmd_evaluate(args) -> int:
    from rsmi_nn.app.config import Config, load_config
    from rsmi_nn.app.evaluation import EVALUATION_JSON, evaluate_run
    from rsmi_nn.app.evaluation.report_section import summary_lines

    own = Path(args.run_dir) / "config.toml"  # the run's own [evaluate] and [run] settings, then the flags
    cfg = _configured(load_config(own) if own.is_file() else Config(), args)
    result = evaluate_run(args.run_dir, cfg.evaluate, device=cfg.run.device)
    print("\n".join(summary_lines(result)))
    print(f"evaluation: {Path(args.run_dir) / EVALUATION_JSON}")
    return 0


def _cmd_compare(args) -> int:
    from rsmi_nn.app.compare import compare_runs
    from rsmi_nn.app.compare_options import CompareOptions
    from rsmi_nn.app.config import Config

    cfg = _configured(Config(), args)
    given = {k.split(".", 1)[1]: v for k, v in vars(args).items() if k.startswith("compare.") and v is not None}
    result = compare_runs(args.runs, args.out, samples=args.samples, options=CompareOptions.create(**given),
                          seed=cfg.run.seed)
    key = f"fraction_above_{result['options']['threshold']:g}"
    print(f"{'level':>5} {'matched|corr|':>14} {key:>20} {'GW':>10}")
    for lv in result["levels"]:
        m = lv["matching"]
        cells = [f"{v:.4g}" if isinstance(v, float) else "-" for v in (m.get("mean_abs_corr"), m.get(key),
                                                                       lv["gw_distance"])]
        print(f"{lv['level']:>5} {cells[0]:>14} {cells[1]:>20} {cells[2]:>10}")
    print(f"comparison: {Path(args.out) / 'compare.json'}, {Path(args.out) / 'compare.html'}")
    return 0


def _cmd_report(args) -> int:
    from rsmi_nn.app.config import Config
    from rsmi_nn.app.report import write_report

    cfg = _configured(Config(), args)
    path = write_report(args.run_dir, max_cards=cfg.export.max_cards, top_units=cfg.export.top_units,
                        seed=cfg.run.seed)
    print(f"report: {path}")
    return 0


def _cmd_encode(args) -> int:
    from rsmi_nn.app.config import Config
    from rsmi_nn.app.encode import encode_to_file

    _configured(Config(), args)
    path = encode_to_file(args.run_dir, args.out, store=args.store, samples=args.samples, key=args.key)
    print(f"encoded {args.run_dir} -> {path}")
    return 0


def _print_summary(out: Path, seconds: float) -> None:
    from rsmi_nn.rundir import read_flow  # imports torch: not at start-up, so that `rsmi --help` is fast

    if rank() != 0:
        return
    try:
        flow = read_flow(out)
    except FileNotFoundError:
        return
    print(f"{'level':>5} {'units':>7} {'blocks':>7} {'xi':>8} {'xi(l0)':>8} {'locality':>9} {'MI[nats]':>9}")

    def f(v):
        return f"{v:.3g}" if isinstance(v, (int, float)) and v is not None else "-"

    for r in flow:
        print(f"{r.get('level', '-'):>5} {r.get('num_nodes', '-'):>7} {r.get('num_blocks', '-'):>7} "
              f"{f(r.get('correlation_length')):>8} {f(r.get('correlation_length_level0')):>8} "
              f"{f(r.get('locality')):>9} {f(r.get('mi_mean')):>9}")
    report = out / "report.html"
    print(f"run directory: {out} ({seconds:.1f} s)" + (f"; report: {report}" if report.is_file() else ""))


_COMMANDS = {"run": _cmd_run, "record": _cmd_record, "graph": _cmd_graph, "flow": _cmd_flow,
             "export": _cmd_export, "evaluate": _cmd_evaluate, "report": _cmd_report,
             "compare": _cmd_compare, "encode": _cmd_encode}


# ----------------------------------------------------------------------------------------------
# entry point
# ----------------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    """Run ``rsmi`` with ``argv`` (default ``sys.argv[1:]``); returns the exit status."""
    argv = sys.argv[1:] if argv is None else list(argv)
    debug = "--debug" in argv
    parser = build_parser()
    joined = False
    try:
        args = parser.parse_args(argv)
        if args.command is None:
            parser.print_help()
            return EXIT_USAGE
        joined = start(args.command)
        with restored_logging():
            return _COMMANDS[args.command](args)
    except SystemExit as exc:  # --help / --version
        return int(exc.code) if isinstance(exc.code, int) else (0 if exc.code is None else EXIT_ERROR)
    except UsageError as err:
        if debug:
            raise
        sys.stderr.write(error_line(err))
        return EXIT_USAGE
    except KeyboardInterrupt:
        sys.stderr.write("rsmi: interrupted (re-run the same command to resume)\n")
        return 130
    except Exception as err:  # the CLI's one-line error for any failure
        if debug:
            raise
        sys.stderr.write(error_line(err))
        return EXIT_ERROR
    finally:
        stop(joined)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
