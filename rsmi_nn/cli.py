"""The ``rsmi`` command: record activations, build graphs, run decimation flows, export, report.

Sub-commands (``rsmi <command> --help`` for every flag)::

    rsmi run [CONFIG] --out DIR          the whole pipeline from a TOML config (default: embedded)
    rsmi record --source NAME --out DIR  activations of a model into a store
    rsmi graph  --store DIR --out FILE   the activation graph of a store (or of a samples file)
    rsmi flow   --samples FILE --lattice L --out DIR     decimation flow on raw samples / a store
    rsmi export RUN_DIR                  feature maps, graphs, top examples of a finished flow
    rsmi report RUN_DIR                  the self-contained report.html

A user mistake (unknown model, missing file, bad config key, wrong shapes) ends with one line
``rsmi: error: ...`` on stderr and exit status 1 (2 for a malformed command line); ``--debug``
shows the traceback instead.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from pathlib import Path

from rsmi_nn import __version__

__all__ = ["build_parser", "main"]

log = logging.getLogger("rsmi_nn.cli")

EXIT_ERROR = 1
EXIT_USAGE = 2


class UsageError(Exception):
    """A malformed command line (exit status 2)."""


class _Parser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose errors are one line (raised, printed by :func:`main`)."""

    def error(self, message: str):
        raise UsageError(f"{message} (see `{self.prog} --help`)")


class _Formatter(argparse.RawDescriptionHelpFormatter):
    """Keeps descriptions as written; appends a flag's default when it has a meaningful one."""

    def _get_help_string(self, action):
        text = action.help or ""
        if (action.option_strings and "default" not in text
                and action.default not in (None, False, [], argparse.SUPPRESS)):
            text += " (default: %(default)s)"
        return text


# ----------------------------------------------------------------------------------------------
# parser
# ----------------------------------------------------------------------------------------------
def _common(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("common options")
    g.add_argument("--device", default=None, metavar="DEV",
                   help="where to compute: 'auto' (CUDA when present, else CPU), 'cpu', 'cuda', 'cuda:1' "
                        "(default: the config's run.device, 'auto')")
    g.add_argument("--seed", type=int, default=None,
                   help="seed of every random choice; the same seed gives the same result on the same device "
                        "(default: the config's run.seed, 0)")
    g.add_argument("--quiet", "-q", action="store_true", help="no progress bars, only warnings and errors")
    g.add_argument("--debug", action="store_true", help="show debug logs and full tracebacks of errors")


def _flow_args(p: argparse.ArgumentParser, *, defaults: bool) -> None:
    """Flags mirroring the ``[flow]`` config section (``defaults=False``: None = keep the config's)."""
    from rsmi_nn.config import FlowConfig

    d = FlowConfig() if defaults else None

    def dv(name):
        return getattr(d, name) if d is not None else None

    g = p.add_argument_group("decimation flow (config section [flow])")
    g.add_argument("--levels", type=int, metavar="N", default=dv("levels"), help="number of RSMI coarse-graining levels")
    g.add_argument("--block-size", type=int, metavar="N", default=dv("block_size"),
                   help="units per block (for a lattice: b*b sites, so 4 = 2x2 squares)")
    g.add_argument("--buffer", type=int, metavar="N", default=dv("buffer"),
                   help="buffer width L_B in hops: nodes within L_B hops of a block are ignored")
    g.add_argument("--env", type=int, metavar="N", default=dv("env"),
                   help="environment shell width L_E in hops beyond the buffer")
    g.add_argument("--max-env", type=int, metavar="N", default=dv("max_env"),
                   help="cap on environment nodes per block (a seeded choice keeps this many)")
    g.add_argument("--hidden", type=int, metavar="N", default=dv("hidden"), help="components h of each block's coarse variable")
    g.add_argument("--bound", choices=["infonce", "nwj", "dv", "smile"], default=dv("bound"),
                   help="variational MI bound maximised and reported")
    g.add_argument("--binarize", choices=["anneal", "straight-through"], default=None,
                   help="make the coarse variables binary (+-1), e.g. for spin systems (default: real-valued)")
    g.add_argument("--shared", action="store_true", default=None,
                   help="one filter shared by all blocks (homogeneous lattices)")
    g.add_argument("--steps", type=int, metavar="N", default=None, help="training steps per level (default: the engine's)")
    g.add_argument("--train-batch-size", dest="flow_batch_size", type=int, default=None, metavar="N",
                   help="training batch size per level (default: the engine's)")
    g.add_argument("--lr", type=float, default=None, metavar="RATE", help="learning rate (default: the engine's)")


def _graph_args(p: argparse.ArgumentParser, *, defaults: bool) -> None:
    from rsmi_nn.config import GraphConfig

    d = GraphConfig() if defaults else None
    g = p.add_argument_group("activation graph (config section [graph])")
    g.add_argument("--k", type=int, metavar="N", default=d.k if d else None, help="strongest partners kept per unit")
    g.add_argument("--metric", choices=["corr", "pmi", "gaussian_mi"], default=d.metric if d else None,
                   help="edge weight: |Pearson correlation|, co-firing PMI, or Gaussian MI -1/2 log(1-rho^2)")
    g.add_argument("--threshold", type=float, default=None, metavar="T",
                   help="activation threshold of a unit 'firing' (metric pmi)")
    g.add_argument("--memory-budget", default=None, metavar="SIZE",
                   help="memory budget of the tile-wise top-k pass, e.g. '2GiB' (default: the engine's)")


def _source_args(p: argparse.ArgumentParser, *, required: bool) -> None:
    g = p.add_argument_group("model source (config section [source])")
    g.add_argument("--source", required=required, default=None, metavar="NAME",
                   help="'digits-mlp', 'minilm', or a user model 'python:<module.path or file.py>:<factory>' "
                        "(with --option data=<file>)")
    g.add_argument("--option", "-o", action="append", default=[], metavar="KEY=VALUE",
                   help="source option, repeatable (e.g. data=inputs.npy, max_texts=200)")
    g.add_argument("--modules", action="append", default=None, metavar="PATTERN",
                   help="module name pattern to record, repeatable (fnmatch, e.g. 'encoder.layer.*.intermediate'; "
                        "default: the source's)")
    g.add_argument("--max-samples", type=int, default=None, metavar="N",
                   help="use at most this many inputs (images, or texts for text models)")
    g.add_argument("--batch-size", type=int, default=None, metavar="N", help="inputs per forward pass (default 64)")
    g.add_argument("--reduction", choices=["token", "mean"], default=None,
                   help="text models: one sample per token, or the mean over each text's tokens")


def _samples_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("input samples")
    src = g.add_mutually_exclusive_group(required=True)
    src.add_argument("--samples", metavar="FILE",
                     help="raw samples [N, U]: .npy, .npz, .safetensors or .pt (one column per unit/site)")
    src.add_argument("--store", metavar="DIR", help="an activation store written by `rsmi record`")
    g.add_argument("--key", default=None, help="tensor name inside a multi-tensor samples file")


def build_parser() -> argparse.ArgumentParser:
    """The ``rsmi`` argument parser (also used to generate the CLI reference)."""
    parser = _Parser(
        prog="rsmi",
        description="Real-space mutual-information (RSMI) coarse-graining of neural networks: record "
                    "activations, build activation graphs, run decimation flows, export feature maps.",
        epilog="Start with `rsmi run --out runs/default` (the digits MLP, 1-2 minutes on 2 CPU cores), "
               "then open runs/default/report.html.",
        formatter_class=_Formatter,
    )
    parser.add_argument("--version", action="version", version=f"rsmi-nn {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    p = sub.add_parser("run", help="the whole pipeline: record -> graph -> flow -> export -> report",
                       description="Run the whole pipeline from a TOML config into --out (resumable: "
                                   "finished stages are skipped). Flags override the config's values.",
                       formatter_class=_Formatter)
    p.add_argument("config", nargs="?", default=None, metavar="CONFIG",
                   help="TOML config file, or the name of a shipped one (default, minilm, tiny); "
                        "default: the embedded default (the digits MLP), or the shipped config named "
                        "after --source when there is one")
    p.add_argument("--out", required=True, metavar="DIR", help="run directory to write (or resume)")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE", dest="overrides",
                   help="override any config value, repeatable (e.g. --set flow.levels=3)")
    p.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    _source_args(p, required=False)
    _graph_args(p, defaults=False)
    _flow_args(p, defaults=False)
    _common(p)

    p = sub.add_parser("record", help="record a model's activations into a store",
                       description="Run a model over its inputs and stream the chosen modules' activations "
                                   "to a store directory (manifest + safetensors shards).",
                       formatter_class=_Formatter)
    _source_args(p, required=True)
    p.add_argument("--out", required=True, metavar="DIR", help="store directory to write")
    p.add_argument("--overwrite", action="store_true", help="replace an existing store in --out")
    _common(p)

    p = sub.add_parser("graph", help="build an activation graph from a store or a samples file",
                       description="Build the sparse top-k co-occurrence graph of the units of a store or of "
                                   "a raw [N, U] samples file; writes OUT.safetensors + OUT.json.",
                       formatter_class=_Formatter)
    _samples_args(p)
    p.add_argument("--out", required=True, metavar="FILE", help="graph path (without suffix, or .safetensors/.json)")
    _graph_args(p, defaults=True)
    _common(p)

    p = sub.add_parser("flow", help="run a decimation flow on raw samples or a store",
                       description="Run the RSMI decimation flow on raw samples with a lattice (--lattice L) "
                                   "or a saved graph (--graph FILE), or on an activation store (--store DIR, "
                                   "whose graph is built with --k/--metric); then export and write report.html.",
                       formatter_class=_Formatter)
    _samples_args(p)
    g = p.add_argument_group("level-0 graph")
    geo = g.add_mutually_exclusive_group()
    geo.add_argument("--lattice", type=int, metavar="L",
                     help="the samples are an L x L square lattice (column = row*L + col), periodic by default")
    geo.add_argument("--graph", metavar="GRAPH_FILE", help="a saved ActivationGraph (one node per sample column)")
    g.add_argument("--open", action="store_true", help="open (not periodic) boundaries for --lattice")
    p.add_argument("--out", required=True, metavar="DIR", help="run directory to write (or resume)")
    p.add_argument("--max-samples", type=int, default=None, metavar="N", help="use only the first N samples")
    p.add_argument("--no-report", action="store_true", help="stop after the flow (no export, no report.html)")
    _flow_args(p, defaults=True)
    _graph_args(p, defaults=True)
    _common(p)

    p = sub.add_parser("export", help="export feature maps, graphs and top examples of a run",
                       description="Write feature_maps/, graphs/ and examples/ for a finished flow directory.",
                       formatter_class=_Formatter)
    p.add_argument("run_dir", metavar="RUN_DIR", help="a run directory (flow.json + levels/)")
    p.add_argument("--top-examples", type=int, default=8, help="top-activating inputs kept per coarse variable")
    p.add_argument("--top-units", type=int, default=10, help="level-0 units listed per coarse variable")
    p.add_argument("--no-graphml", action="store_true", help="skip the GraphML copies of the graphs")
    p.add_argument("--store", metavar="DIR", default=None,
                   help="activation store for the top examples (default: RUN_DIR/activations if present)")
    _common(p)

    p = sub.add_parser("report", help="write the self-contained report.html of a run",
                       description="Write RUN_DIR/report.html (all images embedded) and RUN_DIR/plots/*.png.",
                       formatter_class=_Formatter)
    p.add_argument("run_dir", metavar="RUN_DIR", help="a run directory (exported first if needed)")
    p.add_argument("--max-cards", type=int, default=48, help="the most coarse-variable cards shown")
    p.add_argument("--top-units", type=int, default=10, help="level-0 units listed per card")
    _common(p)
    return parser


# ----------------------------------------------------------------------------------------------
# commands
# ----------------------------------------------------------------------------------------------
def _parse_options(items: list[str]) -> dict:
    from rsmi_nn.config import parse_override

    out = {}
    for item in items:
        if "=" not in item:
            raise UsageError(f"--option {item!r} must look like KEY=VALUE (e.g. data=inputs.npy)")
        key, value = parse_override(item)
        out[key] = value
    return out


def _apply_common(cfg, args) -> None:
    if args.device is not None:
        cfg.run.device = args.device
    if args.seed is not None:
        cfg.run.seed = args.seed
    if args.quiet:
        cfg.run.quiet = True


def _apply_source(cfg, args) -> None:
    if args.source is not None:
        if args.source != cfg.source.name:
            cfg.source.options = {}
            cfg.source.modules = None
        cfg.source.name = args.source
    opts = _parse_options(args.option)
    cfg.source.options.update(opts)
    for flag, key in (("modules", "modules"), ("max_samples", "max_samples"), ("batch_size", "batch_size"),
                      ("reduction", "reduction")):
        value = getattr(args, flag, None)
        if value is not None:
            setattr(cfg.source, key, value)


def _apply_graph(cfg, args) -> None:
    for key in ("k", "metric", "threshold", "memory_budget"):
        value = getattr(args, key, None)
        if value is not None:
            setattr(cfg.graph, key, value)


def _apply_flow(cfg, args) -> None:
    for flag, key in (("levels", "levels"), ("block_size", "block_size"), ("buffer", "buffer"), ("env", "env"),
                      ("max_env", "max_env"), ("hidden", "hidden"), ("bound", "bound"), ("binarize", "binarize"),
                      ("shared", "shared"), ("steps", "steps"), ("flow_batch_size", "batch_size"), ("lr", "lr")):
        value = getattr(args, flag, None)
        if value is not None:
            setattr(cfg.flow, key, value)


def _cmd_run(args) -> int:
    from rsmi_nn.config import builtin_configs, load_config, parse_override
    from rsmi_nn.pipeline import run_pipeline

    config_path = args.config
    if config_path is None and args.source is not None and args.source in builtin_configs():
        config_path = args.source  # `rsmi run --source minilm` uses the shipped minilm.toml
    cfg = load_config(config_path)
    _apply_source(cfg, args)
    _apply_graph(cfg, args)
    _apply_flow(cfg, args)
    for item in args.overrides:
        key, value = parse_override(item)
        cfg.set(key, value, origin="--set")
    _apply_common(cfg, args)
    cfg.validate()
    if args.print_config:
        sys.stdout.write(cfg.to_toml())
        return 0
    _configure_logging(cfg.run.quiet, args.debug)
    t0 = time.perf_counter()
    out = run_pipeline(cfg, args.out)
    _print_summary(out, time.perf_counter() - t0)
    return 0


def _cmd_flow(args) -> int:
    from rsmi_nn.config import Config
    from rsmi_nn.pipeline import run_pipeline

    cfg = Config()
    if args.samples is not None:
        cfg.source.name = f"samples:{args.samples}"
        if args.key is not None:
            cfg.source.options["key"] = args.key
        if args.lattice is not None:
            cfg.source.options["lattice"] = args.lattice
            cfg.source.options["periodic"] = not args.open
        elif args.graph is not None:
            cfg.source.options["graph"] = args.graph
    else:
        if args.lattice is not None:
            raise UsageError("--lattice applies to --samples, not to an activation --store")
        cfg.source.name = f"store:{args.store}"
        if args.graph is not None:
            raise UsageError("--graph with --store is not supported; pass the store's samples with --samples")
    if args.open and args.lattice is None:
        raise UsageError("--open only applies together with --lattice")
    if args.samples is not None and args.lattice is None and args.graph is None:
        raise UsageError("raw --samples need a geometry: pass --lattice L or --graph GRAPH_FILE")
    cfg.source.max_samples = args.max_samples
    _apply_graph(cfg, args)
    _apply_flow(cfg, args)
    _apply_common(cfg, args)
    cfg.validate()
    _configure_logging(cfg.run.quiet, args.debug)
    t0 = time.perf_counter()
    out = run_pipeline(cfg, args.out, report=not args.no_report)
    _print_summary(out, time.perf_counter() - t0)
    return 0


def _cmd_record(args) -> int:
    from rsmi_nn.config import Config
    from rsmi_nn.pipeline import record_stage

    cfg = Config()
    _apply_source(cfg, args)
    _apply_common(cfg, args)
    cfg.validate()
    out = Path(args.out)
    if (out / "manifest.json").exists() and not args.overwrite:
        raise ValueError(f"{str(out)!r} already holds an activation store; pass --overwrite or another --out")
    from rsmi_nn.pipeline import prepare_input

    _configure_logging(cfg.run.quiet, args.debug)
    _, source, _ = prepare_input(cfg)
    store, _ = record_stage(cfg, out, progress=not cfg.run.quiet, store_dir=out, source=source)
    print(f"recorded {store.num_samples} samples x {store.num_units} units into {out}")
    return 0


def _cmd_graph(args) -> int:
    from rsmi_nn.config import Config, parse_bytes
    from rsmi_nn.files import load_samples

    cfg = Config()
    _apply_graph(cfg, args)
    _apply_common(cfg, args)
    cfg.validate()
    if args.samples is not None:
        from estimators.validation import check_samples

        x = check_samples(load_samples(args.samples, key=args.key), name=f"samples in {args.samples!r}")
    else:
        from graphs import ActivationStore

        x = ActivationStore.open(args.store)
    _configure_logging(cfg.run.quiet, args.debug)
    from graphs import build_graph

    kwargs = {"k": cfg.graph.k, "metric": cfg.graph.metric, "device": cfg.run.device, "progress": not cfg.run.quiet}
    if cfg.graph.threshold is not None:
        kwargs["threshold"] = cfg.graph.threshold
    if cfg.graph.memory_budget is not None:
        kwargs["memory_budget"] = parse_bytes(cfg.graph.memory_budget)
    graph = build_graph(x, **kwargs)
    st, js = graph.save(args.out)
    print(f"graph: {graph.num_nodes} nodes, {graph.num_edges // 2} edges -> {st}, {js}")
    return 0


def _cmd_export(args) -> int:
    from rsmi_nn.export import export_run

    _configure_logging(args.quiet, args.debug)
    for name in ("top_examples", "top_units"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    index = export_run(args.run_dir, top_examples=args.top_examples, top_units=args.top_units,
                       graphml=not args.no_graphml, store=args.store)
    print(f"exported {args.run_dir} -> {index.parent}")
    return 0


def _cmd_report(args) -> int:
    from rsmi_nn.report import write_report

    _configure_logging(args.quiet, args.debug)
    for name in ("max_cards", "top_units"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    path = write_report(args.run_dir, max_cards=args.max_cards, top_units=args.top_units,
                        seed=args.seed if args.seed is not None else 0)
    print(f"report: {path}")
    return 0


def _print_summary(out: Path, seconds: float) -> None:
    import json

    flow_path = out / "flow.json"
    if not flow_path.is_file():
        return
    flow = json.loads(flow_path.read_text(encoding="utf-8"))
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
             "export": _cmd_export, "report": _cmd_report}


# ----------------------------------------------------------------------------------------------
# entry point
# ----------------------------------------------------------------------------------------------
def _configure_logging(quiet: bool, debug: bool) -> None:
    level = logging.DEBUG if debug else (logging.WARNING if quiet else logging.INFO)
    if quiet:  # third-party progress bars too (transformers' weight loading, hub downloads)
        for var, value in (("TQDM_DISABLE", "1"), ("HF_HUB_DISABLE_PROGRESS_BARS", "1"),
                           ("TRANSFORMERS_VERBOSITY", "error")):
            os.environ.setdefault(var, value)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("[%(asctime)s] %(levelname)s %(name)s: %(message)s", "%H:%M:%S"))
    for name in ("rsmi_nn", "graphs", "estimators", "experiments", "py.warnings"):
        lg = logging.getLogger(name)
        lg.handlers[:] = [handler]
        lg.setLevel(level)
        lg.propagate = False
    logging.captureWarnings(True)


def _one_line(err: BaseException) -> str:
    if isinstance(err, KeyError) and err.args:
        msg = f"missing key {err.args[0]!r}"
    else:
        msg = str(err) or type(err).__name__
    msg = " ".join(msg.split())
    if not isinstance(err, (ValueError, FileNotFoundError, ImportError, KeyError, TypeError, UsageError, OSError)):
        msg = f"{type(err).__name__}: {msg} (run with --debug for the traceback)"
    return msg


def main(argv: list[str] | None = None) -> int:
    """Run ``rsmi`` with ``argv`` (default ``sys.argv[1:]``); returns the exit status."""
    argv = sys.argv[1:] if argv is None else list(argv)
    debug = "--debug" in argv
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        if args.command is None:
            parser.print_help()
            return EXIT_USAGE
        return _COMMANDS[args.command](args)
    except SystemExit as exc:  # --help / --version
        return int(exc.code) if isinstance(exc.code, int) else (0 if exc.code is None else EXIT_ERROR)
    except UsageError as err:
        if debug:
            raise
        sys.stderr.write(f"rsmi: error: {_one_line(err)}\n")
        return EXIT_USAGE
    except KeyboardInterrupt:
        sys.stderr.write("rsmi: interrupted (re-run the same command to resume)\n")
        return 130
    except Exception as err:  # the CLI's one-line error for any failure
        if debug:
            raise
        sys.stderr.write(f"rsmi: error: {_one_line(err)}\n")
        return EXIT_ERROR


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
