"""The ``rsmi`` argument parser: sub-commands, and flags generated from the declared options.

Every config key is a flag: :func:`add_option_flags` turns each field of an options class
(:mod:`rsmi_nn.options`, :mod:`rsmi_nn.app.config`) into one ``argparse`` flag with the field's
type, choices and help text, and stores it under the key ``section.name``; :func:`apply_flags`
writes the flags that were given onto a :class:`~rsmi_nn.app.config.Config`. The commands
themselves are in :mod:`rsmi_nn.app.cli`; :mod:`rsmi_nn.app.docs` writes the reference.
"""

from __future__ import annotations

import argparse

from rsmi_nn import __version__
from rsmi_nn.app.config import SECTIONS, EvaluateOptions, ExportOptions, RunOptions, SourceOptions
from rsmi_nn.options import NONE_WORDS, FlowOptions, GraphOptions, Options

__all__ = ["UsageError", "add_option_flags", "apply_flags", "build_parser", "flag_names"]


class UsageError(Exception):
    """A malformed command line (exit status 2)."""


class _Parser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose errors are one line (raised, printed by :func:`main`)."""

    def error(self, message: str):
        raise UsageError(f"{message} (see `{self.prog} --help`)")


_TITLES = {"source": "model source", "graph": "activation graph", "flow": "decimation flow and its RSMI steps",
           "export": "export and report", "evaluate": "does the model notice? (evaluation against baselines)",
           "run": "common options"}
_METAVARS = {int: "N", float: "X", str: "VALUE", list: "PATTERN", dict: "KEY=VALUE"}


def flag_names(name: str, spec) -> list[str]:
    """The command-line spelling(s) of option ``name``: its declared flag, else ``--name-with-dashes``."""
    if spec.flag is None:
        return ["--" + name.replace("_", "-")]
    return [spec.flag] if isinstance(spec.flag, str) else list(spec.flag)


def add_option_flags(parser, options: type[Options], *, only: tuple[str, ...] | None = None,
                     title: str | None = None) -> None:
    """One flag per option of ``options`` (or of the names in ``only``), stored as ``section.name``.

    Flags default to ``None`` (= keep the config's value); the help text ends with the declared default.
    """
    group = parser.add_argument_group(title or f"{_TITLES[options.section]} (config section [{options.section}])")
    for name, (default, spec) in options.specs().items():
        if only is not None and name not in only:
            continue
        shown = "" if default in (None, {}, []) else f" (default: {default})"
        kwargs: dict = {"dest": f"{options.section}.{name}", "default": None, "help": spec.help + shown}
        if spec.kind is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        elif spec.kind in (list, dict):
            kwargs.update(action="append", metavar=_METAVARS[spec.kind])
        else:
            kind = _or_none(spec.kind) if spec.optional and spec.choices is None else spec.kind
            choices = (*spec.choices, NONE_WORDS[0]) if spec.optional and spec.choices else spec.choices
            kwargs.update(type=kind, metavar=_METAVARS[spec.kind] if spec.choices is None else None, choices=choices)
        group.add_argument(*flag_names(name, spec), **kwargs)


def _or_none(kind: type):
    """An argparse type for an optional option: ``none``/``null`` pass through (the option's check turns them
    into None), anything else is ``kind``."""
    def convert(text: str):
        return text if text.lower() in NONE_WORDS else kind(text)

    convert.__name__ = kind.__name__  # argparse names the type in its error message
    return convert


def apply_flags(cfg, args: argparse.Namespace, overrides: list[str] = ()) -> None:
    """Write the flags that were given, then the ``--set`` ``overrides``, then the common flags onto ``cfg``.

    All at once (:meth:`Config.update`), so the checks between options see the final values; a
    changed ``--source`` resets the source's options and modules.
    """
    from rsmi_nn.app.config import parse_override

    given = {k: v for k, v in vars(args).items() if "." in k and v is not None}
    items = []
    name = given.pop("source.name", None)
    if name is not None:
        if name != cfg.source.name:
            items += [("source.options", {}, "--source"), ("source.modules", None, "--source")]
        items.append(("source.name", name, "--source"))
    for item in given.pop("source.options", []):
        if "=" not in item:
            raise UsageError(f"--option {item!r} must look like KEY=VALUE (e.g. data=inputs.npy)")
        key, value = parse_override(item)
        items.append((f"source.options.{key}", value, "--option"))
    common = {k: given.pop(k) for k in list(given) if k.startswith("run.")}  # as before: they win over --set
    items += [(key, value, _flag_of(key)) for key, value in given.items()]
    items += [(*parse_override(text), "--set") for text in overrides]
    items += [(key, value, _flag_of(key)) for key, value in common.items()]
    cfg.update(items)


def _flag_of(dotted: str) -> str:
    section, name = dotted.split(".", 1)
    return flag_names(name, SECTIONS[section].specs()[name][1])[0]


def _common(p: argparse.ArgumentParser) -> None:
    add_option_flags(p, RunOptions, title="common options (config section [run])")
    p.add_argument("--debug", action="store_true", help="show debug logs and full tracebacks of errors")


def _samples_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("input samples")
    src = g.add_mutually_exclusive_group(required=True)
    src.add_argument("--samples", metavar="FILE",
                     help="raw samples [N, U]: .npy, .npz, .safetensors or .pt (one column per unit/site)")
    src.add_argument("--store", metavar="DIR", help="an activation store written by `rsmi record`")
    g.add_argument("--key", default=None, help="tensor name inside a multi-tensor samples file")


def _subparser(sub, name: str, help: str, description: str) -> argparse.ArgumentParser:
    return sub.add_parser(name, help=help, description=description,
                          formatter_class=argparse.RawDescriptionHelpFormatter)


def _run_parser(sub) -> None:
    p = _subparser(sub, "run", "the whole pipeline: record -> graph -> flow -> export -> report",
                   "Run the whole pipeline from a TOML config into --out (resumable: finished stages are skipped). "
                   "Every config key is also a flag; flags override the config's values (a flag's default shown "
                   "below is the value used when neither the config nor a flag sets it).")
    p.add_argument("config", nargs="?", default=None, metavar="CONFIG",
                   help="TOML config file, or the name of a shipped one (default, digits-mlp, minilm, tiny); "
                        "default: the embedded default (MiniLM), or the shipped config named after --source "
                        "when there is one")
    p.add_argument("--out", required=True, metavar="DIR", help="run directory to write (or resume)")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE", dest="overrides",
                   help="override any config value, repeatable (e.g. --set flow.levels=3)")
    p.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    for options in (SourceOptions, GraphOptions, FlowOptions, ExportOptions, EvaluateOptions):
        add_option_flags(p, options)
    _common(p)


def _record_parser(sub) -> None:
    p = _subparser(sub, "record", "record a model's activations into a store",
                   "Run a model over its inputs and stream the chosen modules' activations to a store directory "
                   "(manifest + safetensors shards).")
    add_option_flags(p, SourceOptions)
    p.add_argument("--out", required=True, metavar="DIR", help="store directory to write")
    p.add_argument("--overwrite", action="store_true", help="replace an existing store in --out")
    _common(p)


def _graph_parser(sub) -> None:
    p = _subparser(sub, "graph", "build an activation graph from a store or a samples file",
                   "Build the sparse top-k co-occurrence graph of the units of a store or of a raw [N, U] samples "
                   "file; writes OUT.safetensors + OUT.json.")
    _samples_args(p)
    p.add_argument("--out", required=True, metavar="FILE", help="graph path (without suffix, or .safetensors/.json)")
    add_option_flags(p, GraphOptions)
    _common(p)


def _flow_parser(sub) -> None:
    p = _subparser(sub, "flow", "run a decimation flow on raw samples or a store",
                   "Run the RSMI decimation flow on raw samples with a lattice (--lattice L) or a saved graph "
                   "(--graph FILE), or on an activation store (--store DIR, whose graph is built with "
                   "--k/--metric); then export and write report.html.")
    _samples_args(p)
    g = p.add_argument_group("level-0 graph")
    geo = g.add_mutually_exclusive_group()
    geo.add_argument("--lattice", type=int, metavar="L",
                     help="the samples are an L x L square lattice (column = row*L + col), periodic by default")
    geo.add_argument("--graph", metavar="GRAPH_FILE", help="a saved ActivationGraph (one node per sample column)")
    g.add_argument("--open", action="store_true", help="open (not periodic) boundaries for --lattice")
    p.add_argument("--out", required=True, metavar="DIR", help="run directory to write (or resume)")
    p.add_argument("--no-report", action="store_true", help="stop after the flow (no export, no report.html)")
    add_option_flags(p, SourceOptions, only=("max_samples",), title="input size (config section [source])")
    for options in (FlowOptions, GraphOptions, ExportOptions):
        add_option_flags(p, options)
    _common(p)


def _export_parser(sub) -> None:
    p = _subparser(sub, "export", "export feature maps, graphs and top examples of a run",
                   "Write feature_maps/, graphs/ and examples/ for a finished flow directory.")
    p.add_argument("run_dir", metavar="RUN_DIR", help="a run directory (flow.json + levels/)")
    p.add_argument("--store", metavar="DIR", default=None,
                   help="activation store for the top examples (default: RUN_DIR/activations if present)")
    p.add_argument("--format", choices=("rsmi", "neuronpedia"), default="rsmi",
                   help="rsmi: feature_maps/, graphs/, examples/; neuronpedia: also RUN_DIR/neuronpedia/, the "
                        "variables as Neuronpedia feature dashboards (SAEDashboard batch JSON)")
    add_option_flags(p, ExportOptions, only=("top_examples", "top_units", "graphml"))
    _common(p)


def _evaluate_parser(sub) -> None:
    p = _subparser(sub, "evaluate", "does the model notice? splice each level back into the model, against baselines",
                   "Encode held-out inputs (the source's inputs after those the flow recorded) into each level's coarse "
                   "variables, decode the recorded modules by least squares, splice them into the model and measure "
                   "the output change against the clean model (1) and mean ablation (0), for rsmi and baselines with "
                   "the same number of latents; plus a worst-case bound and per-variable effects. Writes "
                   "RUN_DIR/evaluation.json (a run of `rsmi run` from a model source). Settings: the run's own "
                   "config.toml, then these flags.")
    p.add_argument("run_dir", metavar="RUN_DIR", help="a run directory written by `rsmi run` from a model source")
    names = tuple(n for n in EvaluateOptions.specs() if n != "enabled")
    add_option_flags(p, EvaluateOptions, only=names)
    _common(p)


def _compare_parser(sub) -> None:
    from rsmi_nn.app.compare_options import CompareOptions

    p = _subparser(sub, "compare", "compare two or more runs: variable matching, GW distances, flow invariants",
                   "Compare finished runs level by level: match their coarse variables one-to-one by |corr| on shared "
                   "samples (runs that recorded the same inputs, or runs of the same units re-encoded on both runs' "
                   "samples), the Gromov-Wasserstein distance between their level graphs (POT), and the flow "
                   "invariants of each run with their relative spread. Writes OUT/compare.json and OUT/compare.html.")
    p.add_argument("runs", nargs="+", metavar="RUN_DIR", help="two or more run directories")
    p.add_argument("--out", required=True, metavar="DIR", help="folder for compare.json, compare.html, couplings/")
    p.add_argument("--samples", metavar="FILE", default=None,
                   help="level-0 activations [N, U0] (.npy/.npz/.safetensors/.pt) to match runs of the same units on")
    add_option_flags(p, CompareOptions, title="comparison")
    _common(p)


def _report_parser(sub) -> None:
    p = _subparser(sub, "report", "write the self-contained report.html of a run",
                   "Write RUN_DIR/report.html (all images embedded) and RUN_DIR/plots/*.png.")
    p.add_argument("run_dir", metavar="RUN_DIR", help="a run directory (exported first if needed)")
    add_option_flags(p, ExportOptions, only=("max_cards", "top_units"))
    _common(p)


def _encode_parser(sub) -> None:
    p = _subparser(sub, "encode", "coarse variables of every level for activations, with a finished flow",
                   "Apply a finished flow's filters (linear, binarised or MLP) to level-0 activations, streamed from "
                   "an activation store (the run's level-0 units, by name) or a raw [N, U0] samples file; write one "
                   "safetensors file with one tensor [N, J_l * h_l] per level (level_000, level_001, ...).")
    p.add_argument("run_dir", metavar="RUN_DIR", help="a finished run directory (flow.json + levels/)")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--store", metavar="DIR", default=None,
                     help="activation store holding the run's level-0 units (default: RUN_DIR/activations)")
    src.add_argument("--samples", metavar="FILE", default=None,
                     help="raw samples [N, U0], one column per level-0 unit in the run's order")
    p.add_argument("--key", default=None, help="tensor name inside a multi-tensor samples file")
    p.add_argument("--out", required=True, metavar="FILE", help="safetensors file to write")
    _common(p)


def build_parser() -> argparse.ArgumentParser:
    """The ``rsmi`` argument parser (also used to generate the CLI reference)."""
    parser = _Parser(
        prog="rsmi",
        description="Real-space mutual-information (RSMI) coarse-graining of neural networks: record "
                    "activations, build activation graphs, run decimation flows, export feature maps.",
        epilog="Start with `rsmi run --out runs/default` (MiniLM on its bundled corpus, ~80 s on 2 CPU "
               "cores; `rsmi run digits-mlp` takes ~10 s), then open runs/default/report.html.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"rsmi-nn {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for make in (_run_parser, _record_parser, _graph_parser, _flow_parser, _export_parser, _evaluate_parser,
                 _report_parser, _compare_parser, _encode_parser):
        make(sub)
    return parser
