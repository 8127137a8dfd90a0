"""StoreWriter: bounded buffering, shard layout, overwriting only a store's own files."""

import torch

from graphs.store import ActivationStore
from graphs.store_format import MANIFEST_NAME, is_store_file
from graphs.store_writer import StoreWriter

MANIFEST = {"kind": "tensor", "names": ["u:0", "u:1", "u:2"], "modules": [], "num_units": 3}


def test_writer_buffers_less_than_one_shard(tmp_path):
    w = StoreWriter(tmp_path, shard_size=10)
    for i in range(9):
        w.add(torch.full((7, 3), float(i)), input_index=torch.arange(7 * i, 7 * i + 7))
        assert w._pending_rows < 10  # memory bounded by one shard, not by the number of samples
    m = w.close(MANIFEST)
    assert m["num_samples"] == 63 and [sh["num_samples"] for sh in m["shards"]] == [10] * 6 + [3]
    s = ActivationStore.open(tmp_path)
    assert s.sample_info([0, 62])["input_index"].tolist() == [0, 62]
    assert s.to_tensor()[:, 0].tolist() == [float(i // 7) for i in range(63)]


def test_overwrite_removes_only_store_files(tmp_path):
    w = StoreWriter(tmp_path, shard_size=4)
    w.add(torch.ones(6, 3), input_index=torch.arange(6))
    w.close(MANIFEST)
    # left by a killed run: graphs.atomic's temporary files are named .<final name>.<random>.tmp
    (tmp_path / ".shard-00002.safetensors.k3j2x9.tmp").write_bytes(b"partial")
    (tmp_path / ".manifest.json.a8b7c6.tmp").write_bytes(b"{")
    (tmp_path / "notes.txt").write_text("keep me")
    (tmp_path / ".notes.txt.q1w2e3.tmp").write_text("not ours")
    w = StoreWriter(tmp_path, shard_size=4, overwrite=True)
    left = sorted(f.name for f in tmp_path.iterdir())
    assert left == [".notes.txt.q1w2e3.tmp", "notes.txt"]
    w.add(torch.zeros(2, 3), input_index=torch.arange(2))
    assert w.close(MANIFEST)["num_samples"] == 2 == w.num_written
    assert ActivationStore.open(tmp_path).num_samples == 2


def test_is_store_file():
    for name in ["shard-00000.safetensors", "inputs.json", "inputs.safetensors", MANIFEST_NAME,
                 ".shard-00001.safetensors.abc.tmp", ".inputs.json.x1.tmp"]:
        assert is_store_file(name), name
    for name in ["notes.txt", "shard-1.npy", ".notes.txt.abc.tmp", "graph.json"]:
        assert not is_store_file(name), name
