"""rsmi-nn: real-space mutual-information coarse-graining of neural networks.

Composes ``graphs`` (activation graphs, regions) and ``estimators`` (MI bounds, critics)
into the RSMI coarse-graining step and the decimation flow. Public names are imported
lazily (PEP 562) so that ``rsmi --help`` starts fast.
"""

from estimators.lazy import lazy_exports

__version__ = "0.1.0"

_EXPORTS = {
    "coarse_grain": "rsmi_nn.coarse_graining",
    "CoarseGrainer": "rsmi_nn.coarse_graining",
    "CoarseGrainResult": "rsmi_nn.coarse_graining",
    "run_flow": "rsmi_nn.flow",
    "FlowResult": "rsmi_nn.flow",
    "correlation_length": "rsmi_nn.observables",
    "locality_preservation": "rsmi_nn.observables",
    "export_run": "rsmi_nn.export",
    "load_run": "rsmi_nn.export",
    "Run": "rsmi_nn.export",
    "write_report": "rsmi_nn.report",
    "run_pipeline": "rsmi_nn.pipeline",
}

__all__ = ["__version__", *sorted(_EXPORTS)]

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, globals())
