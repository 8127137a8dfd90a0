"""Does the model notice? The separation-of-scales evaluation of a run against baselines.

``evaluate_run(run_dir)`` splices each level's coarse variables (decoded by least squares) back into
the model on held-out inputs and measures the output change, against block PCA, block mean, global PCA
and a TopK SAE with the same number of latents, plus a worst-case bound and per-variable effects;
it writes ``run_dir/evaluation.json``. :func:`report_section` renders it for ``report.html``.

Files: :mod:`.held_out` (inputs the flow did not record, the model on them), :mod:`.model` (splicing
through forward hooks), :mod:`.decoder` (ridge least squares), :mod:`.metrics` (per model kind),
:mod:`.worst_case`, :mod:`.variable_effect`, :mod:`.evaluate` (the whole measurement),
:mod:`.report_section`.
"""

from rsmi_nn.app.evaluation.evaluate import EVALUATION_JSON, evaluate_run, evaluation_is_current, read_evaluation

__all__ = ["EVALUATION_JSON", "evaluate_run", "evaluation_is_current", "read_evaluation"]
