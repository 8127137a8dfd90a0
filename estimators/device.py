"""Device selection (``"auto"`` means CUDA when present, else CPU), the matmul path of training (TF32 on CUDA,
oneDNN for the critics' large products on CPUs where it keeps float32) and huge pages for large CPU tensors.

Importing this module asks torch to back CPU tensors of 2 MiB and more with transparent huge pages
(:func:`huge_page_allocations`; ``THP_MEM_ALLOC_ENABLE=0`` in the environment keeps torch's default)."""

from __future__ import annotations

import functools
import math
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext

import torch

__all__ = ["NARROW_COLUMNS", "NARROW_MIN_ROWS", "Scratch", "bmm", "huge_page_allocations", "is_narrow", "narrow_bmm",
           "onednn_keeps_float32", "resolve_device", "settle_cpu_threads", "small_pages", "training_precision"]

_settled = False
_onednn_in_training = False  # inside training_precision on a CPU whose oneDNN keeps float32

# oneDNN costs ~12 us a call against MKL's ~4 (Zen 5, torch 2.13.0): products of one problem's critic, 128 x 64 x 32,
# ran 0.4x MKL's speed, of 16 problems 1.5-1.8x. The training decides once, from its number of problems, never from a
# chunk's: on the two paths the same product differs in its last bits.
ONEDNN_MIN_PROBLEMS = 16

# the smallest (M, K, N) of a product [c, M, K] @ [c, K, N] sent to oneDNN. torch itself sends a product there only
# when c * M * K * N > 4096, so at M * K * N <= 4096 a problem alone went to MKL and the same problem in a batch to
# oneDNN — other last bits, which would make a rank's share of the blocks train otherwise than in one process
# (measured at (16, 32, 8), (32, 16, 8), (32, 32, 4)). Inside this region the bits were the same whatever the batch
# (c = 1..600), the layout (either operand transposed) or the thread count (torch 2.13.0, Zen 5, 2026-12-03: M and K
# in 32..1024, N in 8..128, 1-16 threads). oneDNN gains where the inner dimension is large ([64, 64] @ [64, 8] 3.2x
# MKL's speed, 64 problems) and loses where it is small ([64, 8] @ [8, 32] 0.7x).
ONEDNN_MIN_SHAPE = (32, 32, 8)

# a product [c, M, K] @ [c, K, N] with NARROW_COLUMNS[0] <= N <= NARROW_COLUMNS[1] and M >= NARROW_MIN_ROWS, not sent to
# oneDNN (where the CPU has AVX-512: :func:`_has_avx512`), is computed transposed (:func:`narrow_bmm`). Inside these
# bounds a problem's turned product had the same bits alone as in any batch of the same layout, on 1 and 2 threads,
# under MKL's strict reproducibility (torch 2.13.0, Zen 4 with AVX2 only, 2026-12-04: M in 32..615, K in 1..128,
# N in 2..8); at M = 16 (N 4-8, K >= 25) and at N = 1 (a contiguous left operand) it did not. A row's value did not
# depend on how many rows the product has either (c = 1, M 32..4 097 against 6 000, any offset, K 1..300, N 2..8, 1-2
# threads): the shared critic's products flatten all its blocks' rows into one. The layout itself matters: at N = 2
# and small K (7, 25; M 40-64) a transposed left operand gives other bits than a contiguous one (MKL's plain product
# there does not), so a problem's operands must be laid out alike alone and in a batch — as the engine's gathers and
# views make them, whatever the batch. On an Intel AVX-512 VM (2026-12-05) a row's bits held in 122 of 126 such
# shapes (K 1-300, N 2-8, pieces of 32-615 rows of 1 000 / 4 097): not at K = 2, N 2-4, pieces of 32 rows.
NARROW_COLUMNS = (2, 8)
NARROW_MIN_ROWS = 32

HUGE_PAGE_BYTES = 2 << 20  # torch's threshold for huge-page allocations (x86-64's 2 MiB pages)


def huge_page_allocations() -> bool:
    """Ask torch's CPU allocator for transparent huge pages (``madvise``) on tensors of 2 MiB and more; returns
    whether it now asks.

    torch reads ``THP_MEM_ALLOC_ENABLE`` once, at the process's first CPU allocation (PyTorch 2.2, pull request
    115990), so this sets it for that read (unless the environment already says, ``0`` keeping torch's default) and
    only takes effect before any CPU tensor exists: importing this module calls it, and every entry point of the
    three packages imports it (through :mod:`estimators.validation`, and the loaders of samples and runs) before it
    makes a tensor; a script that makes tensors before it imports any of them keeps torch's default. Large
    temporaries (a step's gathered environments, score chunks, held-out passes) are otherwise fresh ``mmap`` regions
    faulted in 4 KiB at a time on every call. Measured on this project's 2-core VM (torch 2.13.0, 2026-12-03, the
    default run's flow at the benchmark's earlier step settings): 2.6 M -> 0.4 M page faults, the flow stage 23.4 ->
    20.9 s, every MI the same bits; a gather of 1 321 blocks x 25 units x 1 230 rows 143 -> 23 ms. Whether the
    kernel grants the pages is its own setting (``/sys/kernel/mm/transparent_hugepage/enabled``: ``madvise`` or
    ``always``); nothing changes numerically.
    """
    if sys.platform != "linux":  # torch's huge-page allocations are Linux's
        return False
    given = os.environ.get("THP_MEM_ALLOC_ENABLE")
    os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")
    try:
        return _page_aligned_allocation()
    finally:  # torch has read it by now: child processes (a benchmark's baseline) inherit the environment as it was
        if given is None:
            del os.environ["THP_MEM_ALLOC_ENABLE"]


PAGE_BYTES = 4096
_MADV_NOHUGEPAGE = 15  # linux/mman.h


def small_pages(t: torch.Tensor) -> torch.Tensor:
    """``t`` itself, its memory asked back to 4 KiB pages (``madvise(MADV_NOHUGEPAGE)``): for a large CPU tensor
    written once and kept, called before it is written.

    Huge pages pay off on memory that is reused: a step's temporaries, freed and allocated again within the
    process (the per-block L = 32 Ising step 37.3-37.8 -> 35.5-36.8 s with them). The first touch of memory the process
    has not used yet costs more in huge pages than in small ones on this project's VMs (2-core AMD EPYC, Zen 4,
    2026-12-03: a fresh [20 000, 4 096] float32 tensor 0.29-0.48 s to write with huge pages, 0.07-0.09 s without,
    0.02 s with huge pages just freed by the same process; no compaction stall counted, so the cost is the
    hypervisor's first touch of the 2 MiB pages the guest hands out), and a step's standardised copy of the
    samples is exactly that: on a shared L = 64 Ising step ~1 s of 2.8-4.6 s. Only the pages lying wholly inside
    ``t`` are advised (nothing else shares them); a no-op off Linux, off the CPU and where ``madvise`` fails."""
    if sys.platform != "linux" or t.device.type != "cpu" or t.numel() == 0:
        return t
    start = t.data_ptr()
    end = start + t.numel() * t.element_size()
    first, last = -(-start // PAGE_BYTES) * PAGE_BYTES, end // PAGE_BYTES * PAGE_BYTES
    if last - first >= HUGE_PAGE_BYTES:
        _libc().madvise(first, last - first, _MADV_NOHUGEPAGE)
    return t


class Scratch:
    """One buffer handed out again and again as views, grown to the largest request. Large temporaries made afresh
    at every call are each a new region to fault in (2-core Zen 4 VM: a held-out pass's chunk of environments, 256
    blocks x 128 sites x 256 rows = 33 MB, 44-58 ms a gather, 14 ms without huge pages, 3 ms into a buffer already
    touched; the float64 chunks of a pass of moments over [20 000, 4 096] samples, 2 MiB each, 0.35-0.55 s in all,
    0.09 s in one buffer). A view is valid until the next :meth:`take`. By default its buffer keeps huge pages: reused
    many times, it gains from them (shared L = 64 Ising step 1.7-1.8 s; in small pages 2.5-2.8 s, 3.6x the page
    faults); ``small=True`` is for a buffer used once or a few times."""

    def __init__(self, *, small: bool = False):
        """``small`` : the buffer in small pages (:func:`small_pages`), for one used once or a few times, whose first
        touch is most of its cost."""
        self._flat: torch.Tensor | None = None
        self._small = small

    def take(self, shape: tuple[int, ...], like: torch.Tensor) -> torch.Tensor:
        """A contiguous ``shape`` view of the buffer, of ``like``'s dtype and device."""
        n = math.prod(shape)
        flat = self._flat
        if flat is None or flat.numel() < n or flat.dtype != like.dtype or flat.device != like.device:
            flat = self._flat = like.new_empty(n)
            if self._small:
                small_pages(flat)
        return flat[:n].view(shape)


@functools.cache
def _libc():
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    libc.madvise.restype = ctypes.c_int
    return libc


def _page_aligned_allocation() -> bool:
    """Whether torch asks for huge pages: a large CPU tensor starts on a page boundary (with glibc's malloc; an
    allocator preloaded in its place, jemalloc say, may page-align every large block and make this read True)."""
    # torch page-aligns its huge-page allocations (torch 2.13.0); otherwise a 40 MiB tensor (above glibc's largest
    # mmap threshold, so a fresh mapping) starts 64 bytes past a page boundary. Never written: no page is touched.
    return torch.empty(20 * HUGE_PAGE_BYTES, dtype=torch.uint8).data_ptr() % 4096 == 0


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """Turn ``"auto"``/``None``/a name into a ``torch.device``, refusing CUDA when it is absent (and, for the CPU,
    :func:`settle_cpu_threads` first)."""
    if device is None or device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={str(device)!r} was requested but CUDA is not available; use device='cpu' or 'auto'")
    if dev.type == "cpu":
        settle_cpu_threads()
    return dev


def settle_cpu_threads() -> None:
    """Run torch's vectorised ``exp`` and ``log`` once on every intra-op thread (once per process).

    Measured on this project's 2-core VMs (torch 2.13.0 CPU wheel, 2026-12-02): in ~2 % of fresh processes
    under load (8 of 430), the first ``logsumexp`` computed once the thread pool was up came out ~1e-5 off
    (relative) on every row one worker thread computed, and never again in that process — harmless to an
    estimate, but it broke "same seed, same bytes" and a test comparing two paths to 1e-5
    (``tests/estimators/test_heldout.py``). With one ``logsumexp`` first, before anything else: 0 of 420.
    Called by :func:`resolve_device` and when the engine's graph code is imported (after MKL's reproducibility
    is set, :func:`graphs.distributed.strict_blas`)."""
    global _settled
    if not _settled:
        _settled = True
        torch.logsumexp(torch.zeros(2 * max(1, torch.get_num_threads()), 2048), dim=1)  # a chunk per thread, or more


@contextmanager
def training_precision(device: torch.device, *, problems: int) -> Iterator[None]:
    """The matmul precision of a training step of ``problems`` problems; the previous setting is restored on exit.

    CUDA: TF32 (``"high"``), whose 10-bit mantissa sits far below the minibatch noise. CPU, from
    :data:`ONEDNN_MIN_PROBLEMS` problems: :func:`bmm` sends its products to oneDNN where
    :func:`onednn_keeps_float32` says that changes the speed, not the accuracy. ``problems`` counts every
    problem of the training (a rank's share included), so every rank decides as one process does.
    Used around the critic's and filter's forward and backward passes only: held-out MI and co-occurrence
    statistics stay on the default path (they are the numbers we report). Half-precision autocast is not used
    at all: the logsumexp of InfoNCE over a batch loses the small MI differences it has to resolve.
    """
    global _onednn_in_training
    kind = torch.device(device).type
    if kind == "cuda":
        before = torch.get_float32_matmul_precision()
        torch.set_float32_matmul_precision("high")
        try:
            yield
        finally:
            torch.set_float32_matmul_precision(before)
    elif kind == "cpu" and problems >= ONEDNN_MIN_PROBLEMS and not _onednn_in_training and onednn_keeps_float32():
        _onednn_in_training = True
        try:
            yield
        finally:
            _onednn_in_training = False
    else:
        yield


def bmm(a: torch.Tensor, b: torch.Tensor, add: torch.Tensor | None = None, *,
        out: torch.Tensor | None = None) -> torch.Tensor:
    """``torch.bmm(a, b)`` (``torch.baddbmm(add, a, b)`` given ``add``) for ``a [c, M, K]``, ``b [c, K, N]``.

    Inside :func:`training_precision` on a CPU where oneDNN keeps float32, products of at least
    :data:`ONEDNN_MIN_SHAPE` into a contiguous ``out`` (or none) go to oneDNN (1.8-3.2x MKL's speed on AMD CPUs),
    others to MKL; narrow products (:func:`is_narrow`: MKL's, on the CPU) are computed transposed (:func:`narrow_bmm`)
    unless oneDNN takes them on a CPU with AVX-512. The switch is process-wide state: one training at a time per
    process (as the engine runs).
    """
    m, k, n = ONEDNN_MIN_SHAPE
    routed = (_onednn_in_training and a.shape[1] >= m and a.shape[2] >= k and b.shape[2] >= n
              and (out is None or out.is_contiguous()))
    if is_narrow(a, b) and not (routed and _has_avx512()) and (add is None or add.dim() == 3):
        product = narrow_bmm(a, b, add)
        return product if out is None else out.copy_(product)
    with _onednn_products() if routed else nullcontext():
        return torch.bmm(a, b, out=out) if add is None else torch.baddbmm(add, a, b, out=out)


@functools.cache
def _has_avx512() -> bool:
    """Whether this CPU reports AVX-512 (``avx512f`` in ``/proc/cpuinfo``; False where it cannot be read). oneDNN's
    float32 products are its AVX-512 code: 1.8-3.2x MKL's speed on the Zen 5 VM (narrow ones included), the same
    speed as MKL's on a Zen 4 VM showing AVX2 only (2026-12-04, ``[256, 128, 128] @ [256, 128, 8]`` 5.6 ms routed,
    5.2 ms MKL, 1.6 ms turned). So a narrow product a training would send to oneDNN is turned instead where the CPU
    has no AVX-512: a property of the machine, so the same bits on every run there."""
    try:
        with open("/proc/cpuinfo") as info:
            return any(line.startswith("flags") and " avx512f" in line for line in info)
    except OSError:
        return False


def is_narrow(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Whether ``a [c, M, K] @ b [c, K, N]`` is a narrow product whose turned form keeps a problem's bits in any batch
    (:data:`NARROW_COLUMNS`, :data:`NARROW_MIN_ROWS`): measured for MKL's CPU products only, so False on other
    devices and on builds without MKL. :func:`bmm` turns such a product unless a training sends it to oneDNN on a CPU
    with AVX-512. The bits hold under MKL's strict reproducibility, which the engine sets (:mod:`graphs.distributed`);
    a script using :mod:`estimators` alone gets the same values to float32 rounding."""
    return (a.device.type == "cpu" and _mkl_products() and NARROW_COLUMNS[0] <= b.shape[2] <= NARROW_COLUMNS[1]
            and a.shape[1] >= NARROW_MIN_ROWS)


@functools.cache
def _mkl_products() -> bool:
    """Whether this build of torch computes CPU products with MKL (the library the narrow bounds were measured on)."""
    return torch.backends.mkl.is_available()


def narrow_bmm(a: torch.Tensor, b: torch.Tensor, add: torch.Tensor | None = None) -> torch.Tensor:
    """A product with few output columns computed transposed, ``(bᵀ aᵀ + addᵀ)ᵀ``: a few rows times a matrix,
    where ``a @ b`` is a matrix times a few columns, which MKL's batched products run several times slower on this
    project's 2-core AMD CPUs (Zen 4 with AVX2 only, 2026-12-04: 256 Ising blocks' environment layer
    ``[256, 128, 128] @ [256, 128, 8]`` 5.09 -> 1.22 ms, its weight gradient 3.85 -> 1.07 ms; the default run's level
    0, ``[512, 64, 64] @ [512, 64, 8]``, 2.25 -> 0.78 ms). The same value to float32 rounding (other last bits: the
    sums run in another order); the result is the transpose of a contiguous ``[c, N, M]``."""
    bt, at = b.transpose(1, 2), a.transpose(1, 2)
    return (torch.bmm(bt, at) if add is None else torch.baddbmm(add.transpose(1, 2), bt, at)).transpose(1, 2)


@contextmanager
def _onednn_products() -> Iterator[None]:
    """Allow oneDNN bf16 math for float32 products (which sends them to oneDNN rather than MKL)."""
    backend = torch.backends.mkldnn.matmul
    before = backend.fp32_precision
    backend.fp32_precision = "bf16"
    try:
        yield
    finally:
        backend.fp32_precision = before


@functools.cache
def onednn_keeps_float32() -> bool:
    """Whether float32 products sent to oneDNN keep float32 accuracy on this CPU (probed once per process).

    torch's CPU wheel sends float32 products to MKL, whose code on AMD CPUs is AVX2-class. Allowed bf16 math,
    torch sends them to oneDNN instead, which rounds to bf16 only where the CPU has kernels for it (Intel AMX)
    and otherwise runs its own AVX-512 float32 code. Measured on a 2-core AMD EPYC of family 26 (Zen 5, torch
    2.13.0, 2026-12-03): ``bmm`` of the critics' shapes 1.8-3.2x faster, the same error against float64 (the
    same bits as MKL's where N >= 16 and K < 256, other last bits at N = 8 or K >= 256). The probe: products
    of a few shapes against float64; True when the path exists (oneDNN built in, torch's per-backend precision,
    2.9 and later), every relative error is float32's (< 1e-5; bf16 gives ~1e-3) and a problem alone comes out
    in the bits it has in its batch.
    """
    mkldnn = torch.backends.mkldnn
    if not (mkldnn.is_available() and hasattr(getattr(mkldnn, "matmul", None), "fp32_precision")):
        return False
    gen = torch.Generator().manual_seed(0)
    shapes = [(64, 32, 32, 8), (32, 128, 64, 64), (1, 512, 1024, 256), (4, 256, 2048, 128)]  # the smallest routed first
    pairs = [(torch.randn(p, m, k, generator=gen), torch.randn(p, k, n, generator=gen)) for p, m, k, n in shapes]
    try:
        with _onednn_products():
            products = [torch.bmm(a, b) for a, b in pairs]
            alone = torch.bmm(pairs[0][0][:1], pairs[0][1][:1])  # a problem alone: the same bits as in its batch
    except RuntimeError:  # a build whose oneDNN path refuses the setting: MKL it is
        return False
    if not torch.equal(alone, products[0][:1]):
        return False
    for (a, b), c in zip(pairs, products):
        exact = torch.bmm(a.double(), b.double())
        if not float((c.double() - exact).abs().max() / exact.abs().max()) < 1e-5:
            return False
    return True


huge_page_allocations()  # before this process's first CPU tensor, when the engine is imported first
