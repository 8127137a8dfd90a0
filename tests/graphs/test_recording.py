"""Streamed recording: exact values, padding, reductions, sort windows, shards, errors."""

import pytest
import torch
from torch import nn

from graphs.hooks import capture
from graphs.recording import record_activations
from graphs.store import ActivationStore


def test_record_tensor_inputs_shards_and_batches(net, tmp_path):
    x = torch.randn(53, 5, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        h1 = torch.relu(net.body[0](x))
        c = net.conv(net.pair.lin(torch.tanh(net.body[2](h1))).unsqueeze(1))
    expected = torch.cat([h1, c.reshape(53, -1)], dim=1)
    a = record_activations(net, x, ["body.1", "conv"], tmp_path / "a", batch_size=7, shard_size=10,
                           device="cpu", progress=False)
    b = record_activations(net, x, ["body.1", "conv"], tmp_path / "b", batch_size=64, device="cpu", progress=False)
    assert len(a.manifest["shards"]) == 6 and len(b.manifest["shards"]) == 1
    assert a.names[:2] == ["body.1:0", "body.1:1"] and a.names[7] == "conv:0" and a.num_units == 7 + 8
    assert a.modules[1] == {"name": "conv", "shape": [2, 4], "dtype": "float32", "offset": 7, "num_units": 8}
    torch.testing.assert_close(a.to_tensor(), expected, rtol=1e-6, atol=1e-6)
    # a different batch size may change the matmul kernel's summation order: float32 round-off only
    torch.testing.assert_close(a.to_tensor(), b.to_tensor(), rtol=1e-6, atol=1e-6)
    c = record_activations(net, x, ["body.1", "conv"], tmp_path / "c", batch_size=7, shard_size=4,
                           device="cpu", progress=False)
    torch.testing.assert_close(a.to_tensor(), c.to_tensor(), rtol=0, atol=0)  # sharding alone changes nothing
    streamed = list(a.iter_batches(batch_size=13))
    assert [t.shape[0] for t in streamed] == [13, 13, 13, 13, 1]
    torch.testing.assert_close(torch.cat(streamed), expected, rtol=1e-6, atol=1e-6)
    assert a.sample_info([0, 52])["input_index"].tolist() == [0, 52]
    assert net.training  # the training flag is restored
    stats, rows = a.unit_stats(), a.to_tensor(dtype=torch.float64)  # taken window by window while recording
    assert stats.count == 53
    torch.testing.assert_close(stats.mean, rows.mean(0), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(stats.var(), rows.var(0, correction=0), rtol=1e-10, atol=1e-12)
    assert torch.equal(stats.min, rows.min(0).values) and torch.equal(stats.max, rows.max(0).values)


def test_record_refuses_nonempty_out_unless_overwrite(net, tmp_path):
    x = torch.randn(4, 5)
    record_activations(net, x, "body.1", tmp_path, device="cpu", progress=False)
    with pytest.raises(ValueError, match="not empty.*overwrite=True"):
        record_activations(net, x, "body.1", tmp_path, device="cpu", progress=False)
    (tmp_path / "notes.txt").write_text("keep me")
    store = record_activations(net, x[:3], "body.3", tmp_path, device="cpu", progress=False, overwrite=True)
    assert store.num_samples == 3 and store.num_units == 4 and (tmp_path / "notes.txt").exists()


def test_record_errors(net, tmp_path):
    with pytest.raises(ValueError, match="tokenizer=None"):
        record_activations(net, ["a text"], "body.1", tmp_path / "t", progress=False)
    with pytest.raises(ValueError, match="reduction"):
        record_activations(net, torch.randn(2, 5), "body.1", tmp_path / "r", reduction="max", progress=False)
    with pytest.raises(ValueError, match="matches no module"):
        record_activations(net, torch.randn(2, 5), "bodyy", tmp_path / "m", progress=False)
    assert not (tmp_path / "m").exists() or not any((tmp_path / "m").iterdir())


def test_interrupted_recording_is_detectable(tmp_path):
    class Fails(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(3, 3)
            self.calls = 0

        def forward(self, x):
            self.calls += 1
            if self.calls == 3:
                raise RuntimeError("crash in batch 3")
            return self.lin(x)

    with pytest.raises(RuntimeError, match="crash"):
        record_activations(Fails(), torch.randn(10, 3), "lin", tmp_path, batch_size=2, shard_size=2,
                           device="cpu", progress=False)
    assert any(tmp_path.glob("shard-*.safetensors"))
    with pytest.raises(FileNotFoundError, match="not a finished activation store"):
        ActivationStore.open(tmp_path)


# ----------------------------------------------------------------------------- text models
@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory):
    transformers = pytest.importorskip("transformers")
    words = ["the", "cat", "sat", "on", "mat", "a", "dog", "ran", "far", "away", "and", "slept"]
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words]
    path = tmp_path_factory.mktemp("tok") / "vocab.txt"
    path.write_text("\n".join(vocab) + "\n")
    tok = transformers.BertTokenizerFast(vocab_file=str(path))
    config = transformers.BertConfig(vocab_size=len(vocab), hidden_size=16, num_hidden_layers=2,
                                     num_attention_heads=2, intermediate_size=24, max_position_embeddings=32)
    torch.manual_seed(0)
    model = transformers.BertModel(config).eval()
    return model, tok


TEXTS = ["the cat sat", "a dog ran far away and the cat slept on the mat", "the dog"]


def _alone(model, tok, text):
    """Intermediate outputs of one text run without any padding: [layers, tokens, 24]."""
    enc = tok(text, return_tensors="pt")
    with torch.no_grad(), capture(model, "encoder.layer.*.intermediate") as acts:
        model(**enc)
    return torch.cat([acts[f"encoder.layer.{i}.intermediate"][0] for i in range(2)], dim=-1)


def test_per_token_capture_excludes_padding(tiny_bert, tmp_path):
    model, tok = tiny_bert
    store = record_activations(model, TEXTS, "encoder.layer.*.intermediate", tmp_path, batch_size=3,
                               tokenizer=tok, device="cpu", progress=False)
    alone = [_alone(model, tok, t) for t in TEXTS]
    assert store.num_units == 48 and store.names[24] == "encoder.layer.1.intermediate:0"
    assert store.num_samples == sum(a.shape[0] for a in alone)  # padding tokens are not samples
    torch.testing.assert_close(store.to_tensor(), torch.cat(alone), rtol=1e-5, atol=1e-5)
    info = store.sample_info(range(store.num_samples))
    assert info["input_index"].tolist() == [i for i, a in enumerate(alone) for _ in range(a.shape[0])]
    ex = store.examples([2, 5])  # text 0 is [CLS] the cat sat [SEP]; sample 5 opens text 1
    assert ex[0]["text"] == "the [[cat]] sat" and ex[0]["token"] == "cat"
    assert ex[1]["token"] == "[CLS]" and ex[1]["text"].startswith("[[[CLS]]] a dog")


def test_mean_reduction_and_special_tokens(tiny_bert, tmp_path):
    model, tok = tiny_bert
    mean = record_activations(model, TEXTS, "encoder.layer.*.intermediate", tmp_path / "m", batch_size=2,
                              tokenizer=tok, reduction="mean", device="cpu", progress=False)
    alone = [_alone(model, tok, t) for t in TEXTS]
    torch.testing.assert_close(mean.to_tensor(), torch.stack([a.mean(0) for a in alone]), rtol=1e-5, atol=1e-5)
    assert mean.examples([2])[0]["text"] == "the dog"
    no_special = record_activations(model, TEXTS, "encoder.layer.0.intermediate", tmp_path / "s", batch_size=2,
                                    tokenizer=tok, keep_special_tokens=False, device="cpu", progress=False)
    assert no_special.num_samples == sum(a.shape[0] - 2 for a in alone)
    torch.testing.assert_close(no_special.to_tensor(), torch.cat([a[1:-1, :24] for a in alone]), rtol=1e-5, atol=1e-5)


def test_text_module_without_token_dim_is_refused(tiny_bert, tmp_path):
    model, tok = tiny_bert
    with pytest.raises(ValueError, match="token dimension"):
        record_activations(model, TEXTS, "pooler", tmp_path, tokenizer=tok, device="cpu", progress=False)


def test_sort_window_keeps_input_order_and_truncation_is_reported(tiny_bert, tmp_path, caplog):
    model, tok = tiny_bert
    texts = TEXTS * 3
    runs = [record_activations(model, texts, "encoder.layer.1.intermediate", tmp_path / str(w), batch_size=2,
                               tokenizer=tok, sort_window=w, device="cpu", progress=False) for w in (1, 5, None)]
    info = [r.sample_info(range(r.num_samples)) for r in runs]
    for r, i in zip(runs[1:], info[1:]):
        assert all(torch.equal(i[k], info[0][k]) for k in i)  # same samples, same (input, token) order
        torch.testing.assert_close(r.to_tensor(), runs[0].to_tensor(), rtol=1e-5, atol=1e-5)
    with caplog.at_level("WARNING"):
        short = record_activations(model, TEXTS, "encoder.layer.0.intermediate", tmp_path / "t", max_length=4,
                                   tokenizer=tok, device="cpu", progress=False)
    assert "2 of 3 texts were truncated" in caplog.text and short.manifest["truncated_inputs"] == 2
    assert short.num_samples == 4 + 4 + 4



class TokenNet(nn.Module):
    """A sequence model over token ids: embedding, a per-token MLP, and a pooled head."""

    def __init__(self, vocab=11, d=6):
        super().__init__()
        self.emb = nn.Embedding(vocab, d)
        self.mlp = nn.Sequential(nn.Linear(d, 8), nn.GELU())
        self.head = nn.Linear(8, 3)
        self.seen_mask = None

    def forward(self, ids, attention_mask=None):
        self.seen_mask = attention_mask
        h = self.mlp(self.emb(ids))
        return self.head(h.mean(1))


def test_token_ids_give_one_sample_per_real_token(tmp_path):
    """Token ids [n, seq] with a mask: one sample per real token of (batch, seq, d) outputs (issue 17)."""
    torch.manual_seed(0)
    net = TokenNet()
    ids = torch.randint(0, 11, (9, 5), generator=torch.Generator().manual_seed(1))
    mask = torch.ones(9, 5, dtype=torch.long)
    mask[2, 3:] = 0
    mask[7, 1:] = 0
    store = record_activations(net, ids, "mlp.1", tmp_path / "a", batch_size=4, attention_mask=mask,
                               device="cpu", progress=False)
    with torch.no_grad():
        expected = net.mlp(net.emb(ids))[mask.bool()]
    assert store.kind == "tokens" and store.manifest["reduction"] == "token"
    assert store.num_samples == int(mask.sum()) == 9 * 5 - 2 - 4 and store.num_units == 8
    torch.testing.assert_close(store.to_tensor(), expected, rtol=1e-6, atol=1e-6)
    info = store.sample_info(range(store.num_samples))
    assert info["input_index"].tolist()[:12] == [0] * 5 + [1] * 5 + [2] * 2
    assert info["token_position"].tolist()[10:12] == [0, 1] and torch.equal(info["token_id"], ids[mask.bool()])
    assert net.seen_mask is not None  # the mask was passed to the model
    mean = record_activations(net, ids, "mlp.1", tmp_path / "m", reduction="mean", attention_mask=mask,
                              device="cpu", progress=False)
    with torch.no_grad():
        h = net.mlp(net.emb(ids))
    w = mask.unsqueeze(-1).float()
    torch.testing.assert_close(mean.to_tensor(), (h * w).sum(1) / w.sum(1), rtol=1e-6, atol=1e-6)
    # without a mask every position is a sample; the model is called with the ids alone
    plain = record_activations(net, ids, "mlp.1", tmp_path / "p", device="cpu", progress=False)
    assert plain.num_samples == 45 and net.seen_mask is None


def test_token_ids_per_input_and_reduction_errors(tmp_path):
    torch.manual_seed(0)
    net = TokenNet()
    ids = torch.randint(0, 11, (6, 4))
    per_input = record_activations(net, ids, "head", tmp_path / "h", device="cpu", progress=False)
    assert per_input.kind == "tensor" and per_input.num_samples == 6 and per_input.num_units == 3
    with pytest.raises(ValueError, match="reduction='mean' cannot apply"):
        record_activations(net, ids, "head", tmp_path / "r", reduction="mean", device="cpu", progress=False)
    with pytest.raises(ValueError, match="every recorded output is"):
        record_activations(net, ids, ["mlp.1", "head"], tmp_path / "mix", device="cpu", progress=False)
    with pytest.raises(ValueError, match="reduction='token' needs a token dimension"):
        record_activations(nn.Sequential(nn.Linear(4, 2)), torch.randn(5, 4), "0", tmp_path / "f", reduction="token",
                           progress=False)
    with pytest.raises(ValueError, match="attention_mask has shape"):
        record_activations(net, ids, "mlp.1", tmp_path / "s", attention_mask=torch.ones(6, 3), progress=False)
    with pytest.raises(ValueError, match="attention_mask must hold 0/1"):
        record_activations(net, ids, "mlp.1", tmp_path / "v", attention_mask=torch.full((6, 4), 2), progress=False)


def test_wrong_input_dtype_names_the_expected_one(tmp_path):
    torch.manual_seed(0)
    with pytest.raises(ValueError, match=r"dtype torch.float32.*expects integer token ids.*'emb' is an Embedding"):
        record_activations(TokenNet(), torch.randn(4, 5), "mlp.1", tmp_path / "a", device="cpu", progress=False)
    mlp = nn.Sequential(nn.Linear(4, 3), nn.ReLU())
    with pytest.raises(ValueError, match=r"dtype torch.int64.*expects torch.float32"):
        record_activations(mlp, torch.ones(4, 4, dtype=torch.long), "1", tmp_path / "b", device="cpu",
                           progress=False)
    with pytest.raises(ValueError, match="beyond the model's embedding table"):
        record_activations(TokenNet(), torch.full((2, 3), 40), "mlp.1", tmp_path / "c", device="cpu", progress=False)
