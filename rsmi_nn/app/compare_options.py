"""The options of ``rsmi compare`` / :func:`rsmi_nn.app.compare.compare_runs`, declared once.

Kept apart from the comparison itself so that the CLI parser imports it without torch or POT.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from rsmi_nn.options import Options, option

__all__ = ["GW_SOLVERS", "CompareOptions"]

GW_SOLVERS = ("exact", "entropic")


@dataclass(frozen=True)
class CompareOptions(Options):
    """How runs are matched and compared (variable matching, GW between level graphs, invariants)."""

    section: ClassVar[str] = "compare"

    max_gw_nodes: int = option(1000, "GW: larger level graphs are compared on a seeded uniform subset of this many "
                               "nodes (exact GW costs about n^3 per iteration)", kind=int, minimum=2)
    gw_solver: str = option("exact", "GW solver: POT's exact conditional gradient, or entropic (regularised by "
                            "--gw-epsilon)", kind=str, choices=GW_SOLVERS)
    gw_epsilon: float = option(0.01, "entropic GW regularisation (on distances scaled to [0, 1])", kind=float,
                               above=0.0)
    n_sources: int = option(256, "blocks used as sources when measuring xi in level-0 hops", kind=int, minimum=1)
    threshold: float = option(0.9, "a matched variable counts as reproduced above this |corr|", kind=float,
                              above=0.0, below=1.0)
