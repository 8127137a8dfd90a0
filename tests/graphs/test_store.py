"""ActivationStore: open errors, streaming across shards, unit selection, examples."""

import json

import pytest
import torch
from torch import nn

from graphs.recording import record_activations
from graphs.store import MANIFEST_NAME, ActivationStore


@pytest.fixture
def store(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 10), nn.ReLU())
    x = torch.randn(41, 64, generator=torch.Generator().manual_seed(3))
    s = record_activations(model, x, "1", tmp_path / "s", batch_size=8, shard_size=6, device="cpu",
                           input_shape=(8, 8), progress=False, metadata={"source": "test"})
    return s, torch.relu(model[0](x)).detach(), x


def test_open_roundtrip(store):
    s, expected, _ = store
    again = ActivationStore.open(s.path / MANIFEST_NAME)  # the manifest path works too
    assert again.names == [f"1:{i}" for i in range(10)] and again.num_samples == 41 == len(again)
    assert again.manifest["metadata"] == {"source": "test"} and again.kind == "tensor"
    torch.testing.assert_close(again.to_tensor(), expected, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("batch_size", [None, 1, 5, 6, 7, 40, 41, 100])
def test_iter_batches_equals_one_pass(store, batch_size):
    s, expected, _ = store
    batches = list(s.iter_batches(batch_size=batch_size))
    if batch_size is not None:
        assert all(b.shape[0] == batch_size for b in batches[:-1]) and 0 < batches[-1].shape[0] <= batch_size
    torch.testing.assert_close(torch.cat(batches), expected, rtol=1e-6, atol=1e-6)


def test_unit_selection(store):
    s, expected, _ = store
    torch.testing.assert_close(s.to_tensor(units=[3, 0]), expected[:, [3, 0]], rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(s.to_tensor(units=["1:9"]), expected[:, [9]], rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(torch.cat(list(s.iter_batches(7, units=slice(2, 5)))), expected[:, 2:5],
                               rtol=1e-6, atol=1e-6)
    with pytest.raises(ValueError, match="unknown unit name"):
        s.to_tensor(units=["nope:1"])
    with pytest.raises(ValueError, match="unit indices"):
        s.to_tensor(units=[10])
    with pytest.raises(ValueError, match="batch_size"):
        next(s.iter_batches(0))


def test_examples_tensor_inputs(store):
    s, _, x = store
    ex = s.examples([0, 40])
    assert [e["input_index"] for e in ex] == [0, 40]
    torch.testing.assert_close(ex[1]["input"], x[40].reshape(8, 8))
    with pytest.raises(ValueError, match="sample indices"):
        s.examples([41])


def test_open_errors(store, tmp_path):
    s, _, _ = store
    with pytest.raises(FileNotFoundError, match="does not exist"):
        ActivationStore.open(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="not a finished activation store"):
        ActivationStore.open(tmp_path / "empty")
    manifest = json.loads((s.path / MANIFEST_NAME).read_text())
    (s.path / MANIFEST_NAME).write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        ActivationStore.open(s.path)
    (s.path / MANIFEST_NAME).write_text(json.dumps({k: v for k, v in manifest.items() if k != "names"}))
    with pytest.raises(ValueError, match=r"lacks required field\(s\) \['names'\]"):
        ActivationStore.open(s.path)
    (s.path / MANIFEST_NAME).write_text(json.dumps({**manifest, "format": "other"}))
    with pytest.raises(ValueError, match="not an rsmi-nn activation manifest"):
        ActivationStore.open(s.path)
    (s.path / MANIFEST_NAME).write_text(json.dumps(manifest))
    (s.path / manifest["shards"][2]["file"]).unlink()
    with pytest.raises(FileNotFoundError, match="shard 'shard-00002.safetensors'"):
        ActivationStore.open(s.path)


def test_to_tensor_rows_picks_rows_across_shards_in_the_given_order(store):
    """``rows`` reads the chosen samples shard by shard (any order, repeats) and refuses indices out of range."""
    s, expected, _ = store
    assert len(s.manifest["shards"]) == 7
    rows = torch.tensor([40, 0, 17, 17, 5, 6, 35])
    torch.testing.assert_close(s.to_tensor(rows=rows), expected[rows], rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(s.to_tensor(units=[3, 1], rows=rows), expected[rows][:, [3, 1]], rtol=1e-6, atol=1e-6)
    assert s.to_tensor(rows=torch.tensor([], dtype=torch.long)).shape == (0, 10)
    with pytest.raises(ValueError, match=r"rows must lie in \[0, 41\)"):
        s.to_tensor(rows=[41])
