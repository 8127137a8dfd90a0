"""The rsmi-nn application: configs, the ``rsmi`` command, the pipeline, export, plots and the report.

Everything here is built on the engine (``rsmi_nn``'s step, flow and run-directory format,
``graphs``, ``estimators``) and nothing in the engine imports it: the arrows point one way.
"""
