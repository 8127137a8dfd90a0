"""The ``rsmi`` command."""

from __future__ import annotations

import sys

from rsmi_nn import __version__


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    print(f"rsmi {__version__}: sub-commands record, graph, flow, export, report, run (in progress)")
    return 0
