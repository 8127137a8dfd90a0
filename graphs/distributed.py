"""Several processes (``torchrun``), one result: rank helpers over ``torch.distributed``.

Every helper is a no-op without an initialised process group, so a single process needs none of
this. Under ``torchrun`` the process group is set up by :func:`init_from_env` (``gloo`` for CPU
tensors, plus ``nccl`` for CUDA tensors when GPUs are present; each rank takes the GPU of its
``LOCAL_RANK``). The engine then shards its heavy loops and gathers the pieces so that every rank
returns the same result as one process:

- :func:`graphs.build_graph` shares the row bands of the upper triangle between ranks
  (:func:`band_owners`) and merges the partial top-k lists;
- :func:`rsmi_nn.coarse_grain` trains each rank's share of blocks (:func:`share`).

Failures: the local work of a stage runs inside :func:`agreed`; a rank whose work raises keeps its own
exception and every other rank raises :class:`RankFailed` naming it, so the whole job exits non-zero
instead of waiting for a collective that never comes. A rank that dies outright is detected by its peers'
broken connections or by the process group's timeout (``RSMI_DIST_TIMEOUT`` seconds, default 1 800),
and ``torchrun`` names it. Only rank 0 writes files (:func:`is_writer`).
"""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import timedelta

import torch

from estimators.device import settle_cpu_threads

__all__ = ["RankFailed", "agreed", "all_gather_objects", "all_gather_tensors", "band_owners", "barrier", "broadcast_object",
           "init_from_env", "is_active", "is_writer", "on_writer", "rank", "share", "strict_blas",
           "thread_count_free_blas", "world_size"]

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT_S = 1800
_MKL_CBWR_AUTO, _MKL_CBWR_STRICT, _MKL_CBWR_ALL = 2, 0x10000, ~0


class RankFailed(RuntimeError):
    """Raised on every rank whose own work succeeded when another rank's work failed (the message names it)."""


def is_active() -> bool:
    """True inside an initialised process group of more than one rank."""
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    """This process's rank (0 without a process group)."""
    import torch.distributed as dist

    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def world_size() -> int:
    """The number of ranks (1 without a process group)."""
    import torch.distributed as dist

    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def is_writer() -> bool:
    """Whether this process writes files: rank 0, or the only process."""
    return rank() == 0


def init_from_env(timeout_s: float | None = None) -> bool:
    """Join the process group that ``torchrun`` describes in the environment; returns whether one was joined.

    Does nothing (returns False) when ``WORLD_SIZE`` is unset or 1, or when a group is already initialised;
    otherwise first turns on :func:`strict_blas`.
    Backend: ``gloo`` for CPU tensors, and ``nccl`` for CUDA tensors when CUDA is available (each rank then
    uses ``cuda:LOCAL_RANK``). ``timeout_s`` (default ``RSMI_DIST_TIMEOUT`` or 1 800 s) bounds every wait.
    """
    import torch.distributed as dist

    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or dist.is_initialized():
        return False
    strict_blas()  # ranks of one thread each give the bits of one process of many threads
    if not thread_count_free_blas():
        log.warning("on this CPU, MKL's matrix products depend on the thread count even in strict mode: these ranks "
                    "reproduce a one-process run only when each process uses the same number of threads "
                    "(e.g. OMP_NUM_THREADS=1 for both)")
    for var in ("RANK", "MASTER_ADDR", "MASTER_PORT"):
        if var not in os.environ:
            raise ValueError(f"WORLD_SIZE={os.environ['WORLD_SIZE']} is set but {var} is not; launch with torchrun "
                             "(e.g. torchrun --standalone --nproc_per_node 2 -m rsmi_nn.app.cli run ...)")
    if timeout_s is None:
        timeout_s = float(os.environ.get("RSMI_DIST_TIMEOUT", DEFAULT_TIMEOUT_S))
    backend = "gloo"
    if torch.cuda.is_available():
        local = int(os.environ.get("LOCAL_RANK", "0"))
        if local >= torch.cuda.device_count():
            raise ValueError(f"LOCAL_RANK={local} but this node has {torch.cuda.device_count()} GPU(s); "
                             "pass --nproc_per_node <= the number of GPUs")
        torch.cuda.set_device(local)
        backend = "cpu:gloo,cuda:nccl"
    dist.init_process_group(backend=backend, timeout=timedelta(seconds=timeout_s))
    log.info("rank %d of %d joined the process group (%s)", rank(), world_size(), backend)
    return True


def strict_blas(*, quiet: bool = False) -> bool:
    """Ask MKL for matrix products whose bits do not depend on the thread count or on memory alignment.

    MKL (torch's CPU BLAS on x86) otherwise splits its sums by thread count and alignment: a flow run with 8
    threads and the same flow run by ranks of one thread each (``torchrun``'s default) differ in the last bits,
    which training amplifies (measured: ``mi_stderr_per_block`` in the 7th digit). This turns on MKL's strict
    conditional numerical reproducibility (``MKL_CBWR=AUTO,STRICT``: the fastest code path of this CPU, sums in a
    fixed order). It must run before the process's first MKL call: importing this module calls it (quietly),
    so any process that imports the engine's graph or flow code before computing gets it, and the ``rsmi``
    command and :func:`init_from_env` call it first. Returns whether strict mode is on; False (changing
    nothing, with a warning unless ``quiet``) without MKL, when ``MKL_CBWR`` is set in the environment (that
    choice stands: ``MKL_CBWR=AUTO`` turns this off), or when MKL was already used.
    """
    import ctypes
    from pathlib import Path

    if not torch.backends.mkl.is_available():
        return False
    get = set_ = None  # MKL's service functions: linked into libtorch_cpu (pip wheels), or a shared libmkl
    for name in [*map(str, sorted((Path(torch.__file__).parent / "lib").glob("libtorch_cpu.*"))), None]:
        try:
            lib = ctypes.CDLL(name)
            get, set_ = lib.mkl_serv_cbwr_get, lib.mkl_serv_cbwr_set
            break
        except (OSError, AttributeError):
            continue
    if set_ is None:
        return False
    wanted = _MKL_CBWR_AUTO | _MKL_CBWR_STRICT
    if get(_MKL_CBWR_ALL) == wanted:
        return True
    if "MKL_CBWR" in os.environ:
        return False
    ok = set_(wanted) == 0
    if not ok and not quiet:
        log.warning("MKL was used before strict reproducibility could be set: results may depend on the thread "
                    "count; call graphs.distributed.strict_blas() (or init_from_env) before any computation")
    return ok


@functools.cache
def thread_count_free_blas() -> bool:
    """Whether this process's matrix products give the same bits with one thread and with several.

    :func:`strict_blas` asks MKL for it, but MKL keeps that promise only on some CPUs (measured 2026-12-02: an
    AMD EPYC of family 26 gave other bits for ``[4..16, 64] @ [64, 12..24]`` with 2 threads than with 1, in strict
    mode as in the default). Probes every product ``[m, 64] @ [64, n]``, m <= 16, n <= 24, with one thread and with
    ``max(2, torch.get_num_threads())`` (~40 ms, once per process); the thread count is restored.
    """
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(64, 16, generator=g), torch.randn(64, 24, generator=g)
    threads = torch.get_num_threads()

    def products(num_threads: int) -> list[torch.Tensor]:
        torch.set_num_threads(num_threads)
        return [a[:, :m].T @ b[:, :n] for m in range(1, 17) for n in range(1, 25)]

    try:
        one, many = products(1), products(max(2, threads))
    finally:
        torch.set_num_threads(threads)
    return all(torch.equal(p, q) for p, q in zip(one, many))


def barrier() -> None:
    """Wait for every rank (no-op in one process)."""
    if is_active():
        import torch.distributed as dist

        dist.barrier()


def broadcast_object(obj=None, src: int = 0):
    """``obj`` of rank ``src`` on every rank (picklable; tensors travel as CPU tensors)."""
    if not is_active():
        return obj
    import torch.distributed as dist

    box = [obj if rank() == src else None]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def all_gather_objects(obj) -> list:
    """Every rank's ``obj``, in rank order (``[obj]`` in one process)."""
    if not is_active():
        return [obj]
    import torch.distributed as dist

    out = [None] * world_size()
    dist.all_gather_object(out, obj)
    return out


def all_gather_tensors(t: torch.Tensor) -> list[torch.Tensor]:
    """Every rank's tensor ``t`` (same shape and dtype on every rank), in rank order, on ``t``'s device."""
    if not is_active():
        return [t]
    import torch.distributed as dist

    t = t.contiguous()
    out = [torch.empty_like(t) for _ in range(world_size())]
    dist.all_gather(out, t)
    return out


@contextmanager
def agreed(what: str) -> Iterator[None]:
    """Run the block on every rank and agree on its outcome: if it raised anywhere, it raises everywhere.

    The failing rank re-raises its own exception (after logging it with its rank); every other rank raises
    :class:`RankFailed` naming the first failing rank, what it was doing and its message. The block must not
    call collectives that a failing rank could skip (do the local work inside, gather after).
    """
    if not is_active():
        yield
        return
    error = None
    try:
        yield
    except Exception as err:  # agreed on below, then re-raised
        error = err
    note = None if error is None else f"{type(error).__name__}: {' '.join(str(error).split())}"
    notes = all_gather_objects(note)
    failed = [r for r, n in enumerate(notes) if n is not None]
    if error is not None:
        log.error("rank %d failed during %s: %s", rank(), what, note)
        raise error
    if failed:
        raise RankFailed(f"rank {failed[0]} failed during {what}: {notes[failed[0]]}"
                         + (f" (ranks {failed} failed)" if len(failed) > 1 else ""))


def on_writer(what: str, fn, *args, **kwargs):
    """``fn(*args, **kwargs)`` on the writing rank (rank 0; the only process), its result sent to every rank.

    For what one rank must do alone (read or write the run directory, decide whether a stage is done): a
    failure there fails every rank (:func:`agreed`, the other ranks raise :class:`RankFailed` naming rank 0).
    The result must be picklable.
    """
    result = None
    with agreed(what):
        if is_writer():
            result = fn(*args, **kwargs)
    return broadcast_object(result)


def share(n: int, parts: int | None = None, index: int | None = None) -> range:
    """The contiguous share ``index`` of ``range(n)`` cut into ``parts`` near-equal pieces (default: this rank's).

    The first ``n % parts`` shares hold one item more; a share may be empty when ``n < parts``.
    """
    parts = world_size() if parts is None else parts
    index = rank() if index is None else index
    base, extra = divmod(n, parts)
    start = index * base + min(index, extra)
    return range(start, start + base + (1 if index < extra else 0))


def band_owners(costs: Sequence[float], parts: int | None = None) -> list[int]:
    """The rank computing each band: longest band first to the least loaded rank (ties: the lower rank).

    ``costs`` : work per band (e.g. rows × columns). Deterministic, so every rank computes the same owners.
    """
    parts = world_size() if parts is None else parts
    load = [0.0] * parts
    owners = [0] * len(costs)
    for i in sorted(range(len(costs)), key=lambda i: (-costs[i], i)):
        r = min(range(parts), key=lambda r: (load[r], r))
        owners[i] = r
        load[r] += costs[i]
    return owners


strict_blas(quiet=True)  # before the first matrix product of a process that imports the engine (see above)
settle_cpu_threads()  # then the first exp of every thread (estimators.device.settle_cpu_threads)
