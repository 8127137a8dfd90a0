"""Lazy public names for a package (PEP 562), so ``import estimators``/``graphs``/``rsmi_nn`` stays cheap.

Each package's ``__init__`` maps a public name to the module that defines it; the module is imported
on first use of the name (e.g. ``torch_geometric`` or ``transformers`` only when they are needed).
"""

from __future__ import annotations

from collections.abc import Callable
from importlib import import_module

__all__ = ["lazy_exports"]


def lazy_exports(package: str, exports: dict[str, str], namespace: dict) -> tuple[Callable, Callable]:
    """Return the ``(__getattr__, __dir__)`` pair for ``package`` exporting ``exports`` (name -> module)."""

    def __getattr__(name: str):
        if name in exports:
            value = getattr(import_module(exports[name]), name)
            namespace[name] = value
            return value
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    def __dir__():
        return sorted(set(namespace) | set(exports))

    return __getattr__, __dir__
