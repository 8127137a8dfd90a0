"""rsmi-nn: real-space mutual-information coarse-graining of neural networks.

The engine: composes ``graphs`` (activation graphs, regions) and ``estimators`` (MI bounds,
critics, the training loop) into the RSMI coarse-graining step, the decimation flow and the
run directory's format. The application (configs, the ``rsmi`` command, pipeline, export,
report) is the sub-package :mod:`rsmi_nn.app`; no engine module imports it. Public names
are imported lazily (PEP 562), so ``import rsmi_nn`` loads neither side's heavy modules;
``export_run``, ``evaluate_run``, ``compare_runs``, ``write_report`` and ``run_pipeline`` are the application's, offered here for
the one-import API and loaded only when used.
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
    "load_run": "rsmi_nn.run",
    "Run": "rsmi_nn.run",
    "Level": "rsmi_nn.run",
    "export_run": "rsmi_nn.app.export",
    "compare_runs": "rsmi_nn.app.compare",
    "evaluate_run": "rsmi_nn.app.evaluation",
    "write_report": "rsmi_nn.app.report",
    "run_pipeline": "rsmi_nn.app.pipeline",
}

__all__ = ["__version__", *sorted(_EXPORTS)]

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, globals())
