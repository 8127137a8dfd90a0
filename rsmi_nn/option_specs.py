"""How an option is declared and checked: :func:`option` makes a dataclass field carrying an :class:`OptionSpec`
(type, default, constraints, help), :class:`Options` checks every field when an instance is made. The engine's
options themselves are declared in :mod:`rsmi_nn.options`; the application's own in :mod:`rsmi_nn.app`.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, ClassVar

__all__ = ["NONE_WORDS", "OptionSpec", "Options", "option", "parse_bytes", "split_overrides"]

NONE_WORDS = ("none", "null")  # how a config file or a command line says None (TOML has no null)


@dataclass(frozen=True)
class OptionSpec:
    """What one option accepts: ``kind`` (int, float, str, bool, list or dict), ``None`` when ``optional``,
    a set of ``choices``, bounds (``minimum`` inclusive, ``above``/``below`` strict), ``check`` (a callable
    raising ``ValueError``), ``convert`` (applied to a value first: documented shorthands), and the CLI
    ``flag`` (or flags) when it is not ``--name-with-dashes``."""

    help: str
    kind: type
    optional: bool = False
    choices: tuple | None = None
    minimum: float | None = None
    above: float | None = None
    below: float | None = None
    check: Any = None
    convert: Any = None
    flag: str | tuple[str, ...] | None = None

    def coerce(self, name: str, value: Any) -> Any:
        """``value`` checked (and converted from text, for command lines) against this spec."""
        if self.convert is not None:
            value = self.convert(value)
        if value is None or (self.optional and isinstance(value, str) and value.lower() in NONE_WORDS):
            if self.optional:
                return None
            raise ValueError(f"{name} cannot be empty; give a {self.kind.__name__}")
        value = _convert(name, value, self.kind)
        if self.choices is not None and value not in self.choices:
            raise ValueError(f"{name}={value!r} is not supported; choose one of {', '.join(map(str, self.choices))}")
        for bound, ok, word in ((self.minimum, lambda v, b: v >= b, ">="), (self.above, lambda v, b: v > b, ">"),
                                (self.below, lambda v, b: v < b, "<")):
            if bound is not None and not (ok(value, bound) and math.isfinite(value)):
                raise ValueError(f"{name} must be {word} {bound}, got {value}")
        if self.check is not None:
            self.check(value)
        return value


def _convert(name: str, value: Any, kind: type) -> Any:
    bad = ValueError(f"{name} must be of type {kind.__name__}, got {value!r}")
    if kind is bool:
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
            return value.lower() in ("true", "1", "yes")
        if not isinstance(value, bool):
            raise bad
        return value
    if kind in (int, float):
        if isinstance(value, str):
            try:
                value = kind(value)
            except ValueError:
                raise bad from None
        if isinstance(value, bool) or not isinstance(value, (int, float)) or (kind is int and not isinstance(value, int)):
            raise bad
        return kind(value)
    if kind is str:
        if isinstance(value, bool) or not isinstance(value, (str, int, float)):
            raise bad
        return str(value)
    if kind is list:
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
            raise bad
        return list(value)
    if not isinstance(value, dict):
        raise bad
    return dict(value)


def option(default: Any, help: str, *, kind: type, **constraints) -> Any:
    """A dataclass field declaring one option (see :class:`OptionSpec` for ``constraints``)."""
    spec = OptionSpec(help=help, kind=kind, **constraints)
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata={"option": spec})
    return field(default=default, metadata={"option": spec})


class Options:
    """Base of the options classes: checks every field on creation; ``replace`` and ``specs``."""

    section: ClassVar[str] = ""

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            object.__setattr__(self, f.name, f.metadata["option"].coerce(f.name, getattr(self, f.name)))

    @classmethod
    def specs(cls) -> dict[str, tuple[Any, OptionSpec]]:
        """``{name: (default, spec)}``: a class's own options first, then those it inherits, each in declaration order."""
        fields = {f.name: f for f in dataclasses.fields(cls)}
        names = [name for klass in cls.__mro__ for name in vars(klass).get("__annotations__", {}) if name in fields]
        out = {}
        for name in dict.fromkeys(names):
            f = fields[name]
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
            out[name] = (default, f.metadata["option"])
        return out

    @classmethod
    def create(cls, **values):
        """``cls(**values)`` with an unknown name reported as a ``ValueError`` listing the valid ones."""
        unknown = sorted(set(values) - set(cls.specs()))
        if unknown:
            raise ValueError(f"unknown option(s) {', '.join(unknown)} for {cls.__name__}; "
                             f"valid ones are {', '.join(cls.specs())}")
        return cls(**values)

    def replace(self, **changes):
        """A copy with ``changes`` applied (checked like a new instance)."""
        return type(self).create(**{**self.to_dict(), **changes})

    def to_dict(self) -> dict:
        """``{name: value}`` in the order of :meth:`specs` (a class's own options first)."""
        return {name: getattr(self, name) for name in self.specs()}


def split_overrides(overrides: dict, *classes: type[Options]) -> list[dict]:
    """Route keyword ``overrides`` to the options class that declares each name (first match wins)."""
    parts: list[dict] = [{} for _ in classes]
    for key, value in overrides.items():
        for part, cls in zip(parts, classes):
            if key in cls.specs():
                part[key] = value
                break
        else:
            valid = sorted({name for cls in classes for name in cls.specs()})
            raise ValueError(f"unknown option {key!r}; valid ones are {', '.join(valid)}")
    return parts


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
        unit = text[i:]
        try:
            number = float(text[:i])
        except ValueError:
            number = math.nan
    if unit not in _UNITS or not math.isfinite(number) or number <= 0:
        raise ValueError(f"memory size {value!r} is not understood; write e.g. '2GiB', '512MB' or a number of bytes")
    return int(number * _UNITS[unit])
