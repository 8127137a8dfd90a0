"""From model runs to activation graphs: capture, co-occurrence statistics, sparse graphs, regions.

Knows nothing of ``rsmi_nn``; may use ``estimators`` for validation.
"""

__all__: list[str] = []
