"""Graphs under torch.distributed: a 2-process gloo run returns the 1-process graph, byte for byte.

``spawn_ranks`` (used by the engine's distributed tests too) starts ``world`` CPU processes joined by
``graphs.distributed.init_from_env``, runs a module-level function in each and returns what each rank
returned (or the exception it raised).
"""

from __future__ import annotations

import os
import socket
import traceback

import numpy as np
import pytest
import torch

from graphs import ActivationGraph, build_graph
from graphs.distributed import agreed, band_owners, share
from graphs.topk import top_k


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, fn, args, out_dir: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank), OMP_NUM_THREADS="1")
    import torch.distributed as dist

    from graphs.distributed import init_from_env, strict_blas

    assert strict_blas()  # before any computation (init_from_env does it too; world = 1 does not join a group)
    torch.set_num_threads(1)
    init_from_env(timeout_s=120)
    try:
        result = ("ok", fn(*args))
    except Exception as err:  # returned to the test, which asserts on it
        result = ("error", err, traceback.format_exc())
    torch.save(result, os.path.join(out_dir, f"rank{rank}.pt"))
    if dist.is_initialized():
        # leave together: rank 1 once died with SIGABRT in teardown ("terminate called without an active exception")
        # while rank 0, the store's host, was already leaving (1 run in ~20; 2026-12-02)
        dist.barrier()
        dist.destroy_process_group()


def spawn_ranks(fn, args, tmp_path, world: int = 2) -> list[tuple]:
    """Run ``fn(*args)`` on ``world`` gloo ranks; returns each rank's ``("ok", value)`` or ``("error", exc, tb)``.

    Every process turns on :func:`graphs.distributed.strict_blas` first, so ``world=1`` is the reference run of
    one process (the test process itself has used MKL already and cannot).
    """
    import torch.multiprocessing as mp

    out = tmp_path / "ranks"
    out.mkdir(exist_ok=True)
    mp.start_processes(_worker, args=(world, _free_port(), fn, args, str(out)), nprocs=world, join=True,
                       start_method="spawn")
    return [torch.load(out / f"rank{r}.pt", weights_only=False) for r in range(world)]


def _graph_bytes(g: ActivationGraph) -> tuple:
    return (g.names, g.edge_index.numpy().tobytes(), g.edge_weight.numpy().tobytes(), g.metadata)


def _graphs(x_np, ising):
    """The graphs compared: resident and streamed bands of continuous data, PMI, and ±1 spins (many ties)."""
    x = torch.from_numpy(x_np)
    return [_graph_bytes(g) for g in (
        build_graph(x, k=5, tile_size=7),
        build_graph(x, k=4, tile_size=9, memory_budget=200_000),  # streamed: one pass per band
        build_graph(x, k=3, metric="pmi", tile_size=11, memory_budget=200_000),
        build_graph(torch.from_numpy(ising), k=6, tile_size=5),
    )]


def _data():
    rng = np.random.default_rng(3)
    latent = rng.standard_normal((400, 6))
    x = latent @ rng.standard_normal((6, 40)) + 0.5 * rng.standard_normal((400, 40))
    spins = np.sign(rng.standard_normal((64, 30))).astype(np.float32)  # few samples of ±1: exact ties
    return x.astype(np.float32), spins


def test_two_ranks_build_the_one_process_graph(tmp_path):
    x, spins = _data()
    torch.set_num_threads(1)  # as each rank: on some CPUs MKL's bits depend on the thread count (see the last test)
    single = _graphs(x, spins)  # (conftest restores the thread count after each test)
    ranks = spawn_ranks(_graphs, (x, spins), tmp_path)
    for r, result in enumerate(ranks):
        assert result[0] == "ok", result[-1]
        for a, b in zip(result[1], single):
            assert a == b, f"rank {r} built another graph"


def _fail_on_rank_1():
    from graphs.distributed import rank

    with agreed("the test stage"):
        if rank() == 1:
            raise ValueError("bad shard on purpose")
    return "unreachable"


def test_a_failing_rank_fails_every_rank_and_is_named(tmp_path):
    from graphs.distributed import RankFailed

    r0, r1 = spawn_ranks(_fail_on_rank_1, (), tmp_path)
    assert r0[0] == "error" and isinstance(r0[1], RankFailed)
    assert "rank 1 failed during the test stage: ValueError: bad shard on purpose" in str(r0[1])
    assert r1[0] == "error" and isinstance(r1[1], ValueError)


def test_top_k_breaks_ties_by_the_smaller_id():
    values = torch.tensor([[1.0, 3.0, 3.0, 2.0, 3.0], [5.0, 5.0, 5.0, 5.0, 5.0]])
    index = torch.tensor([[0, 9, 4, 2, 7], [8, 6, 4, 2, 0]])
    top, ids = top_k(values, 2, index)
    assert top.tolist() == [[3.0, 3.0], [5.0, 5.0]]
    assert ids.tolist() == [[4, 7], [0, 2]]
    top, ids = top_k(values, 2)  # ids = column positions
    assert ids.tolist() == [[1, 2], [0, 1]]


def test_shares_and_band_owners_cover_everything_once():
    assert [list(share(7, 3, i)) for i in range(3)] == [[0, 1, 2], [3, 4], [5, 6]]
    assert [list(share(1, 2, i)) for i in range(2)] == [[0], []]
    owners = band_owners([10, 8, 6, 4, 2], parts=2)
    loads = [sum(c for c, o in zip([10, 8, 6, 4, 2], owners) if o == r) for r in range(2)]
    assert sorted(loads) == [14, 16]
    assert band_owners([5, 5]) == [0, 0]  # one process: everything on rank 0


@pytest.mark.parametrize("k", [1, 3])
def test_running_top_k_is_the_same_in_any_band_order(k):
    """Merging partial lists (what the ranks do) equals feeding every band to one list."""
    from graphs.topk import RunningTopK

    s = torch.randint(0, 4, (23, 23)).float()  # integer scores: many ties
    s = torch.maximum(s, s.T)
    one = RunningTopK(23, k, "cpu")
    parts = [RunningTopK(23, k, "cpu") for _ in range(3)]
    for n, r0 in enumerate(range(0, 23, 5)):
        one.update(s[r0:r0 + 5, r0:].clone(), r0)
        parts[n % 3].update(s[r0:r0 + 5, r0:].clone(), r0)
    for p in parts[1:]:
        parts[0].merge(p.values, p.indices)
    assert [t.tolist() for t in one.edges()] == [t.tolist() for t in parts[0].edges()]


def _recordings(out_dir: str) -> list[tuple]:
    """Record a tensor model (5 windows of 5 inputs) and a text model (3 sorted windows of 4 texts) on this rank.

    Returns per store: the samples' bytes, the per-sample keys, the per-unit statistics and the manifest
    without its shard list (the one field that depends on the number of ranks).
    """
    from pathlib import Path

    import transformers

    from graphs.recording import record_activations

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(6, 9), torch.nn.Tanh(), torch.nn.Linear(9, 4))
    words = ["the", "cat", "sat", "on", "mat", "a", "dog", "ran", "far", "away", "and", "slept"]
    vocab = Path(out_dir) / f"vocab-{os.getpid()}.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words]) + "\n")
    tok = transformers.BertTokenizerFast(vocab_file=str(vocab))
    bert = transformers.BertModel(transformers.BertConfig(
        vocab_size=len(words) + 5, hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=24,
        max_position_embeddings=32)).eval()
    rng = np.random.default_rng(1)
    texts = [" ".join(rng.choice(words, size=rng.integers(1, 12))) for _ in range(11)]
    stores = [record_activations(net, torch.randn(23, 6), ["0", "2"], Path(out_dir) / "tensor", batch_size=5,
                                 progress=False, overwrite=True),
              record_activations(bert, texts, "encoder.layer.*.intermediate", Path(out_dir) / "text", tokenizer=tok,
                                 batch_size=2, sort_window=4, max_length=8, progress=False, overwrite=True)]
    return [(s.to_tensor().numpy().tobytes(), s.sample_info(range(len(s))), s.unit_stats().state(),
             {k: v for k, v in s.manifest.items() if k != "shards"}, len(s.manifest["shards"])) for s in stores]


def test_two_ranks_record_the_one_process_store(tmp_path):
    """Data-parallel recording: each rank records whole windows into its own shards of one store; the samples,
    their keys, the merged per-unit statistics and the manifest (all but the shard list) are the same bits."""
    for d in ("a", "b", "one", "two"):
        (tmp_path / d).mkdir()
    (one_process,) = spawn_ranks(_recordings, (str(tmp_path / "one"),), tmp_path / "a", world=1)
    r0, r1 = spawn_ranks(_recordings, (str(tmp_path / "two"),), tmp_path / "b")
    assert one_process[0] == "ok", one_process[-1]
    single = one_process[1]
    assert r0[0] == r1[0] == "ok", (r0[-1], r1[-1])
    for one, two, same in zip(single, r0[1], r1[1]):
        assert one[0] == two[0] == same[0]
        assert all(torch.equal(one[1][k], two[1][k]) for k in one[1])
        assert all(torch.equal(one[2][k], two[2][k]) for k in one[2])
        assert one[3] == two[3]
        assert one[4] == 1 and two[4] == 2  # one shard per rank
    assert single[1][3]["truncated_inputs"] > 0 and single[1][3]["special_tokens"]


def test_the_thread_count_probe_sees_products_that_change():
    """``thread_count_free_blas`` says False whenever some product here gives other bits with 2 threads than 1."""
    from graphs.distributed import thread_count_free_blas

    g = torch.Generator().manual_seed(1)
    pairs = [(torch.randn(m, k, generator=g), torch.randn(k, n, generator=g))
             for m, k, n in [(7, 400, 19), (5, 64, 12), (4, 1000, 23), (13, 32, 17), (64, 256, 64)]]
    threads = torch.get_num_threads()
    free = thread_count_free_blas()
    assert torch.get_num_threads() == threads  # the probe restores the thread count
    torch.set_num_threads(1)  # conftest restores the thread count after the test
    one = [a @ b for a, b in pairs]
    torch.set_num_threads(2)
    two = [a @ b for a, b in pairs]
    if not all(torch.equal(p, q) for p, q in zip(one, two)):
        assert not free
