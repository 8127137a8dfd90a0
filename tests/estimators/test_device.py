"""Device selection and the training-only matmul precision (TF32 on CUDA, oneDNN on CPU)."""

import sys

import pytest
import torch

from estimators import device
from estimators.device import ONEDNN_MIN_PROBLEMS, bmm, narrow_bmm, onednn_keeps_float32, resolve_device, training_precision


def test_resolve_device():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            resolve_device("cuda")


def test_training_precision_is_tf32_on_cuda_and_restored():
    before = torch.get_float32_matmul_precision()
    with training_precision(torch.device("cuda"), problems=1):  # only a flag: needs no GPU to check
        assert torch.get_float32_matmul_precision() == "high"
    assert torch.get_float32_matmul_precision() == before
    with pytest.raises(RuntimeError), training_precision(torch.device("cuda"), problems=1):
        raise RuntimeError("a failing step")
    assert torch.get_float32_matmul_precision() == before


def test_training_products_on_cpu_keep_float32_accuracy_and_their_bits_whatever_the_batch():
    """What a rank's share of the blocks needs to train as in one process: a problem's product is the same bits
    alone, in any batch, in either layout and on any number of threads (oneDNN where the probe allows it)."""
    gen = torch.Generator().manual_seed(3)
    threads = torch.get_num_threads()
    for m, k, n in [(128, 64, 64), (64, 64, 8), (32, 300, 8), (128, 1, 64), (128, 64, 2), (128, 8, 2), (64, 4, 8),
                    (16, 32, 8), (32, 16, 8), (32, 32, 4), (3, 40, 128), (128, 128, 8), (64, 32, 4), (300, 25, 2)]:
        a, b, add = (torch.randn(9, m, k, generator=gen), torch.randn(9, k, n, generator=gen),
                     torch.randn(9, 1, n, generator=gen))
        exact = torch.bmm(a.double(), b.double())
        with training_precision(torch.device("cpu"), problems=ONEDNN_MIN_PROBLEMS):
            batch, alone = bmm(a, b), bmm(a[4:5], b[4:5])
            flipped = bmm(a[:6].transpose(1, 2).contiguous().transpose(1, 2), b[:6])
            offset = bmm(a, b, add)
            torch.set_num_threads(1)
            try:
                one_thread = bmm(a, b)
            finally:
                torch.set_num_threads(threads)
        assert float((batch.double() - exact).abs().max() / exact.abs().max()) < 1e-6
        assert torch.equal(alone[0], batch[4]) and torch.equal(flipped, batch[:6]) and torch.equal(one_thread, batch)
        assert torch.allclose(offset, batch + add, rtol=1e-5, atol=1e-5)
        with training_precision(torch.device("cpu"), problems=ONEDNN_MIN_PROBLEMS):
            assert torch.equal(bmm(a[4:5], b[4:5], add[4:5])[0], offset[4])


def test_large_products_of_a_training_go_to_onednn_and_the_others_to_mkl(monkeypatch):
    entered = []
    products = device._onednn_products

    def counting():
        entered.append(1)
        return products()

    monkeypatch.setattr(device, "_onednn_products", counting)
    big, small = (torch.randn(2, 64, 64), torch.randn(2, 64, 16)), (torch.randn(2, 64, 8), torch.randn(2, 8, 32))
    strided_out = torch.empty(2, 16, 64).transpose(1, 2)
    with training_precision(torch.device("cpu"), problems=ONEDNN_MIN_PROBLEMS):
        bmm(*big)
        assert len(entered) == int(onednn_keeps_float32())
        bmm(*small)
        bmm(*big, out=strided_out)  # a strided out: MKL, as before (oneDNN's bits would depend on the layout)
        assert len(entered) == int(onednn_keeps_float32())
        assert torch.allclose(strided_out, torch.bmm(*big), rtol=1e-5, atol=1e-5)
    bmm(*big)
    with training_precision(torch.device("cpu"), problems=ONEDNN_MIN_PROBLEMS - 1):
        bmm(*big)
    assert len(entered) == int(onednn_keeps_float32())


@pytest.mark.parametrize("avx512", [False, True])
def test_narrow_products_are_turned_unless_onednn_takes_them_with_avx512(avx512, monkeypatch):
    """A narrow product (few output columns, see ``device.is_narrow``) is computed transposed — the same value —
    except one a training sends to oneDNN on a CPU with AVX-512; the narrow shapes the guard leaves out stay plain."""
    entered, turned = [], []
    products, narrow = device._onednn_products, device.narrow_bmm
    monkeypatch.setattr(device, "_onednn_products", lambda: entered.append(1) or products())
    monkeypatch.setattr(device, "narrow_bmm", lambda *a: turned.append(1) or narrow(*a))
    monkeypatch.setattr(device, "_has_avx512", lambda: avx512)
    gen = torch.Generator().manual_seed(1)
    a, b, add = torch.randn(3, 64, 64, generator=gen), torch.randn(3, 64, 8, generator=gen), torch.randn(3, 1, 8)
    with training_precision(torch.device("cpu"), problems=ONEDNN_MIN_PROBLEMS):
        product = bmm(a, b, add)
    routed = avx512 and onednn_keeps_float32()
    assert (len(entered), len(turned)) == (int(routed), int(not routed))
    assert torch.allclose(product, torch.baddbmm(add, a, b), rtol=1e-5, atol=1e-5)
    out = torch.empty(3, 64, 4)
    assert bmm(a, b[..., :4], out=out) is out and torch.allclose(out, torch.bmm(a, b[..., :4]), rtol=1e-5, atol=1e-5)
    assert len(turned) == 1 + int(not routed)
    for left, right in ((a[:, :16], b), (a, b[..., :1]), (a, torch.randn(3, 64, 9))):  # M < 32; N = 1; N > 8
        bmm(left, right)
    assert len(turned) == 1 + int(not routed)
    monkeypatch.setattr(device, "_mkl_products", lambda: False)  # the bounds are MKL's: other BLAS stay plain
    bmm(a, b)
    assert len(turned) == 1 + int(not routed)


def test_a_turned_product_s_rows_do_not_depend_on_how_many_rows_it_has():
    """The shared critic flattens every block's rows into one product: a row's bits must not depend on the others."""
    gen = torch.Generator().manual_seed(2)
    for k, n in ((1, 2), (25, 8), (128, 4)):
        x, w = torch.randn(1, 3000, k, generator=gen), torch.randn(1, k, n, generator=gen)
        full = narrow_bmm(x, w)
        for first, rows in ((0, 32), (777, 33), (1000, 1500)):
            assert torch.equal(narrow_bmm(x[:, first:first + rows], w), full[:, first:first + rows])


def test_training_precision_on_cpu_is_restored_after_a_failing_step():
    backend, legacy = torch.backends.mkldnn.matmul, torch.get_float32_matmul_precision()
    before = getattr(backend, "fp32_precision", None)
    with training_precision(torch.device("cpu"), problems=ONEDNN_MIN_PROBLEMS - 1):
        assert not device._onednn_in_training  # a one-problem loop keeps MKL's lower cost per call
    with pytest.raises(RuntimeError), training_precision(torch.device("cpu"), problems=ONEDNN_MIN_PROBLEMS):
        assert device._onednn_in_training == onednn_keeps_float32()
        raise RuntimeError("a failing step")
    assert not device._onednn_in_training and getattr(backend, "fp32_precision", None) == before
    assert torch.get_float32_matmul_precision() == legacy
    with pytest.raises(RuntimeError), training_precision(torch.device("cpu"), problems=ONEDNN_MIN_PROBLEMS):
        bmm(torch.randn(2, 64, 64), torch.randn(2, 32, 8))  # fails inside the oneDNN window
    assert getattr(backend, "fp32_precision", None) == before
    assert torch.get_float32_matmul_precision() == legacy


def test_the_onednn_probe_refuses_bf16_rounding(monkeypatch):
    def bf16_bmm(a, b):  # what oneDNN does on a CPU with bf16 kernels (Intel AMX)
        return torch.ops.aten.bmm(a.bfloat16().float(), b.bfloat16().float())

    if not hasattr(getattr(torch.backends.mkldnn, "matmul", None), "fp32_precision"):
        pytest.skip("this torch has no per-backend matmul precision")
    onednn_keeps_float32.cache_clear()
    try:
        with monkeypatch.context() as patch:
            patch.setattr(torch, "bmm", lambda a, b: bf16_bmm(a, b) if a.dtype == torch.float32 else
                          torch.ops.aten.bmm(a, b))
            assert not onednn_keeps_float32()
    finally:
        onednn_keeps_float32.cache_clear()


def _fresh_process(code: str, **env: str) -> list[str]:
    """The words ``code`` prints in a new interpreter (torch reads THP_MEM_ALLOC_ENABLE once per process)."""
    import os
    import subprocess
    from pathlib import Path

    environ = {k: v for k, v in os.environ.items() if k != "THP_MEM_ALLOC_ENABLE"} | env
    return subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True, env=environ,
                          cwd=Path(__file__).resolve().parents[2]).stdout.split()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="torch's huge-page allocations are Linux's")
def test_importing_the_engine_asks_torch_for_huge_pages_and_leaves_the_environment_as_it_was():
    """Large temporaries come from huge pages (fewer page faults) when the engine is imported before any tensor;
    children see the environment their parent was given, so a benchmark's baseline runs on torch's default."""
    probe = ("import os, torch, graphs.distributed\n"
             "from estimators.device import huge_page_allocations, _page_aligned_allocation\n"
             "big = torch.empty(40 << 20, dtype=torch.uint8)\n"
             "print(huge_page_allocations(), big.data_ptr() % 4096 == 0, os.environ.get('THP_MEM_ALLOC_ENABLE'))")
    assert _fresh_process(probe) == ["True", "True", "None"]
    assert _fresh_process(probe, THP_MEM_ALLOC_ENABLE="0") == ["False", "False", "0"]  # the user's choice stands
    late = "import torch; torch.zeros(3)\n" + probe  # torch has read the setting at its first tensor: it says so
    assert _fresh_process(late)[0] == "False"
    for first in ("from graphs import lattice_blocks, lattice_graph, make_regions\n"  # tensors before any flow code
                  "make_regions(lattice_graph(8), lattice_blocks(8, 2), buffer=1, env=1)",
                  "from graphs import load_samples", "from rsmi_nn import load_run"):
        asks = first + "\nfrom estimators.device import _page_aligned_allocation\nprint(_page_aligned_allocation())"
        assert _fresh_process(asks) == ["True"], first


def _vm_flags(address: int) -> list[str]:
    """The ``VmFlags`` of the mapping of this process that holds ``address`` (``/proc/self/smaps``)."""
    inside = False
    with open("/proc/self/smaps") as smaps:
        for line in smaps:
            head = line.split()[0]
            if "-" in head and not head.endswith(":"):
                lo, hi = (int(a, 16) for a in head.split("-"))
                inside = lo <= address < hi
            elif inside and head == "VmFlags:":
                return line.split()[1:]
    raise AssertionError(f"no mapping holds {address:#x}")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="madvise and /proc/self/smaps are Linux's")
def test_small_pages_advises_the_tensors_own_pages_and_changes_nothing_else():
    """A large tensor written once (a step's standardised samples) is kept off huge pages: its mapping says
    ``nh`` (``MADV_NOHUGEPAGE``); the tensor is returned as it was and takes writes as before."""
    t = torch.empty(8 << 20)  # 32 MiB
    assert device.small_pages(t) is t
    page = device.PAGE_BYTES
    inner = -(-t.data_ptr() // page) * page
    assert "nh" in _vm_flags(inner) and "nh" in _vm_flags(inner + t.numel() * 4 - 2 * page)
    t.fill_(1.5)
    assert float(t.sum()) == 1.5 * t.numel()
    small = torch.ones(100)
    assert device.small_pages(small) is small  # less than a huge page: nothing to advise, nothing done
    assert device.small_pages(torch.empty(0)).numel() == 0


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="madvise and /proc/self/smaps are Linux's")
def test_a_small_page_scratch_advises_each_buffer_it_makes_and_a_plain_one_does_not():
    """``Scratch(small=True)`` (a held-out pass's environments, gathered once or a few times): every buffer it makes,
    the first and a grown one, is advised ``nh`` before it is handed out; a plain ``Scratch`` keeps huge pages."""
    page, like = device.PAGE_BYTES, torch.zeros(1)

    def advised(view: torch.Tensor) -> bool:
        return "nh" in _vm_flags(-(-view.data_ptr() // page) * page)

    small = device.Scratch(small=True)
    first = small.take((8 << 20,), like)  # 32 MiB
    assert advised(first)
    grown = small.take((12 << 20,), like)
    assert grown.data_ptr() != first.data_ptr() and advised(grown)
    assert small.take((4 << 20,), like).data_ptr() == grown.data_ptr()  # reused, as any Scratch
    assert not advised(device.Scratch().take((8 << 20,), like))
