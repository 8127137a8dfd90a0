"""The ``rsmi`` command's process set-up: logging (and its undoing for in-process calls), the process group under
``torchrun``, and the one-line error each rank prints."""

from __future__ import annotations

import contextlib
import logging
import os
import sys

from rsmi_nn.app.cli_parser import UsageError

__all__ = ["configure_logging", "error_line", "rank", "restored_logging", "start", "stop"]

SEVERAL_PROCESSES = ("run", "record", "flow", "graph")  # the commands that run under torchrun


def rank() -> int:
    """This process's rank under torchrun, else 0 (without importing torch)."""
    dist = sys.modules.get("torch.distributed")
    return dist.get_rank() if dist is not None and dist.is_available() and dist.is_initialized() else 0


_LOGGERS = ("rsmi_nn", "graphs", "estimators", "experiments", "py.warnings")
_ENV = ("TQDM_DISABLE", "HF_HUB_DISABLE_PROGRESS_BARS", "TRANSFORMERS_VERBOSITY")


@contextlib.contextmanager
def restored_logging():
    """Undo :func:`configure_logging` on exit, so that ``main()`` called in-process (tests, notebooks)
    leaves the caller's logging, warnings capture and environment as they were."""
    saved = {name: (lg.handlers[:], lg.level, lg.propagate)
             for name, lg in ((n, logging.getLogger(n)) for n in _LOGGERS)}
    env = {var: os.environ.get(var) for var in _ENV}
    try:
        yield
    finally:
        for name, (handlers, level, propagate) in saved.items():
            lg = logging.getLogger(name)
            lg.handlers[:] = handlers
            lg.setLevel(level)
            lg.propagate = propagate
        logging.captureWarnings(False)
        for var, value in env.items():
            if value is None:
                os.environ.pop(var, None)
            else:
                os.environ[var] = value


def configure_logging(quiet: bool, debug: bool) -> None:
    this_rank = rank()
    level = logging.DEBUG if debug else (logging.WARNING if quiet or this_rank else logging.INFO)
    if quiet:  # third-party progress bars too (transformers' weight loading, hub downloads)
        for var, value in (("TQDM_DISABLE", "1"), ("HF_HUB_DISABLE_PROGRESS_BARS", "1"),
                           ("TRANSFORMERS_VERBOSITY", "error")):
            os.environ.setdefault(var, value)
    handler = logging.StreamHandler(sys.stderr)
    who = f" rank {this_rank}" if _several() else ""
    handler.setFormatter(logging.Formatter(f"[%(asctime)s{who}] %(levelname)s %(name)s: %(message)s", "%H:%M:%S"))
    for name in _LOGGERS:
        lg = logging.getLogger(name)
        lg.handlers[:] = [handler]
        lg.setLevel(level)
        lg.propagate = False
    logging.captureWarnings(True)


def _several() -> bool:
    """Whether this process is one of several ranks (without importing torch)."""
    dist = sys.modules.get("torch.distributed")
    return dist is not None and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def start(command: str) -> bool:
    """Before a command computes: reproducible BLAS sums, and under ``torchrun`` the process group.

    Returns whether a process group was joined (to leave it at the end).
    """
    from graphs.distributed import init_from_env, strict_blas

    strict_blas()  # the bits of a result do not depend on the thread count (nor on the number of ranks)
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and command not in SEVERAL_PROCESSES:
        raise UsageError(f"rsmi {command} runs in one process; launch it without torchrun "
                         f"({', '.join(SEVERAL_PROCESSES)} run on several)")
    return init_from_env()


def stop(joined: bool) -> None:
    if joined:
        import torch.distributed as dist

        dist.destroy_process_group()


def error_line(err: BaseException) -> str:
    """``rsmi: error: ...``, naming this process's rank under torchrun."""
    who = f" [rank {rank()}]" if _several() else ""
    return f"rsmi: error:{who} {_one_line(err)}\n"


def _one_line(err: BaseException) -> str:
    distributed = sys.modules.get("graphs.distributed")
    rank_failed = (distributed.RankFailed,) if distributed is not None else ()
    if isinstance(err, KeyError) and err.args:
        msg = f"missing key {err.args[0]!r}"
    else:
        msg = str(err) or type(err).__name__
    msg = " ".join(msg.split())
    if not isinstance(err, (ValueError, FileNotFoundError, ImportError, KeyError, TypeError, UsageError, OSError,
                            *rank_failed)):
        msg = f"{type(err).__name__}: {msg} (run with --debug for the traceback)"
    return msg
