"""The ``rsmi`` argument parser: sub-commands and flags (every flag has a help text).

Flags mirror the config sections (:mod:`rsmi_nn.config`); the commands themselves are in
:mod:`rsmi_nn.cli`. ``build_parser()`` also generates the CLI reference.
"""

from __future__ import annotations

import argparse

from rsmi_nn import __version__

__all__ = ["UsageError", "build_parser"]


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
        epilog="Start with `rsmi run --out runs/default` (MiniLM on its bundled corpus, ~2 minutes on 2 CPU "
               "cores; `rsmi run digits-mlp` takes ~10 s), then open runs/default/report.html.",
        formatter_class=_Formatter,
    )
    parser.add_argument("--version", action="version", version=f"rsmi-nn {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    p = sub.add_parser("run", help="the whole pipeline: record -> graph -> flow -> export -> report",
                       description="Run the whole pipeline from a TOML config into --out (resumable: "
                                   "finished stages are skipped). Flags override the config's values.",
                       formatter_class=_Formatter)
    p.add_argument("config", nargs="?", default=None, metavar="CONFIG",
                   help="TOML config file, or the name of a shipped one (default, digits-mlp, minilm, tiny); "
                        "default: the embedded default (MiniLM), or the shipped config named "
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
