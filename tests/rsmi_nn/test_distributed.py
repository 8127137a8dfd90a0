"""The flow under torch.distributed: 2 gloo ranks write the 1-process run byte for byte; a failing rank
fails the job, named, and a rerun resumes from the last finished level."""

from __future__ import annotations

import pytest
import torch

from experiments.gaussian_field import gaussian_field
from graphs.distributed import thread_count_free_blas
from tests.graphs.test_distributed import spawn_ranks

pytestmark = pytest.mark.usefixtures("one_thread")

# blocks stop at different steps (patience 1), a binarised H with training noise, per-block filters
OPTIONS = {"levels": 2, "block_size": 4, "steps": 60, "eval_every": 10, "patience": 1, "batch_size": 64,
           "binarize": "straight-through", "max_env": 24, "progress": False}


def _data():
    _, _, x = gaussian_field(48, 700, seed=4)
    return x.float()


def _flow(x, out, fail_rank=None):
    """record-free pipeline: graph from the samples, then the flow into ``out``; returns comparable bytes."""
    from graphs import build_graph
    from graphs.distributed import rank
    from rsmi_nn import run_flow

    if fail_rank is not None and rank() == fail_rank:
        import rsmi_nn.coarse_graining as cg

        calls = {"n": 0}
        train = cg.train_blocks

        def failing(*args, **kwargs):  # level 1 of this rank dies mid-level (each level trains, then refits)
            calls["n"] += 1
            if calls["n"] == 3:
                raise RuntimeError("simulated crash in level 1")
            return train(*args, **kwargs)

        cg.train_blocks = failing
    graph = build_graph(x, k=6)
    result = run_flow(x, graph, out=out, seed=5, **OPTIONS)
    return _run_bytes(out), graph.edge_index.clone(), result.samples


def _run_bytes(out) -> dict:
    from pathlib import Path

    root = Path(out)
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and p.name != "timing.json"}


@pytest.fixture(scope="module")
def single(tmp_path_factory):
    """The reference: one process (spawned, so that it starts with strict BLAS reproducibility like the ranks)."""
    x = _data()
    tmp = tmp_path_factory.mktemp("single")
    (result,) = spawn_ranks(_flow, (x, str(tmp / "run")), tmp, world=1)
    assert result[0] == "ok", result[-1]
    return x, result[1]


@pytest.fixture(scope="module")
def two(single, tmp_path_factory):
    x, _ = single
    tmp = tmp_path_factory.mktemp("two")
    return spawn_ranks(_flow, (x, str(tmp / "run")), tmp)


def test_two_ranks_write_the_one_process_run(single, two):
    """Every file of the run (flow.json, level records, filters, coarse samples, graphs) is the bytes of one
    process, and every rank returns the same graph and samples. This held only once MKL's sums stopped depending
    on the thread count and alignment (``graphs.distributed.strict_blas``): before, ``mi_stderr_per_block``
    differed in the 7th digit (issue 19)."""
    x, (files, edges, samples) = single
    assert "flow.json" in files and "levels/001/filters.safetensors" in files
    for r, result in enumerate(two):
        assert result[0] == "ok", result[-1]
        got_files, got_edges, got_samples = result[1]
        assert torch.equal(got_edges, edges) and torch.equal(got_samples, samples), f"rank {r}"
    assert two[0][1][0].keys() == files.keys()
    for name, data in files.items():
        assert two[0][1][0][name] == data, f"{name} differs between 1 and 2 ranks"


def test_a_rank_failing_mid_level_fails_the_job_and_a_rerun_resumes(single, tmp_path):
    x, (files, _, _) = single
    out = tmp_path / "crashed"
    r0, r1 = spawn_ranks(_flow, (x, str(out), 1), tmp_path)
    assert r1[0] == "error" and "simulated crash in level 1" in str(r1[1])
    assert r0[0] == "error" and "rank 1 failed during the RSMI step's training" in str(r0[1])
    assert (out / "levels" / "000" / "level.json").is_file()  # level 0 finished and was kept
    assert not (out / "levels" / "001").exists()
    (again,) = spawn_ranks(_flow, (x, str(out)), tmp_path, world=1)  # one process resumes what two began
    assert again[0] == "ok", again[-1]
    assert again[1][0] == files


def _flow_threads(x, out, threads: int):
    torch.set_num_threads(threads)
    return _flow(x, out)


@pytest.mark.skipif(not thread_count_free_blas(), reason="on this CPU MKL's products depend on the thread count even "
                    "in strict mode (graphs.distributed.thread_count_free_blas)")
def test_the_thread_count_does_not_change_the_bytes(single, tmp_path):
    """One process of 8 threads writes the run of 1 thread (what lets `rsmi run` on every core match ranks of one
    thread each): MKL's strict reproducibility (`graphs.distributed.strict_blas`). In MKL's default mode the flow
    of this module differed between 1 and 8 threads."""
    x, (files, _, _) = single
    (result,) = spawn_ranks(_flow_threads, (x, str(tmp_path / "run"), 8), tmp_path, world=1)
    assert result[0] == "ok", result[-1]
    assert result[1][0] == files


def test_no_rank_trains_a_share_of_one_block(monkeypatch):
    """MKL runs a batch of one problem on another kernel than the same problem in a batch (other last bits), so a
    rank never trains one block alone: with fewer than two blocks per rank every rank trains all of them."""
    import rsmi_nn.distributed as dist

    monkeypatch.setattr(dist, "is_active", lambda: True)
    monkeypatch.setattr(dist, "world_size", lambda: 2)
    monkeypatch.setattr(dist, "share", lambda n: range(0, (n + 1) // 2))  # rank 0's share
    assert dist.block_share(3) is None and dist.block_share(1) is None  # shares of 2 and 1: replicated
    assert dist.block_share(4).tolist() == [0, 1]
    assert dist.block_share(8, coupled=True) is None
