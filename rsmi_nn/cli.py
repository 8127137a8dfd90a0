"""``python -m rsmi_nn.cli`` is the ``rsmi`` command, for launchers that take a module name.

    torchrun --standalone --nproc_per_node 2 -m rsmi_nn.cli run CONFIG --out DIR

The engine does not import the application: :mod:`rsmi_nn.app.cli` is loaded only when this file runs
as a program (importing ``rsmi_nn.cli`` loads nothing).
"""

if __name__ == "__main__":  # pragma: no cover (a program: tested through subprocesses)
    import sys

    from rsmi_nn.app.cli import main

    sys.exit(main())
