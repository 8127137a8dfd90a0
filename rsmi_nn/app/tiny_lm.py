"""The built-in ``tiny-lm`` source: a small GPT-style causal language model trained on the bundled corpus.

A 2-layer GPT-2 (``transformers.GPT2LMHeadModel``: width 128, 4 heads, MLP 512, context 64 tokens,
tied embeddings) over a lower-cased word-level vocabulary (``tokenizers`` ``WordLevel`` on the
``Whitespace`` pre-tokenizer: words and runs of punctuation; every word seen at least twice in the
training sentences, at most 4 000; ``[BOS]`` opens every text), trained with Adam on next-token
cross-entropy over the sentences of :func:`rsmi_nn.app.corpus.pydoc_corpus` from number 512 on — the
first 512 sentences are never trained on: they are the source's inputs, so that both the flow's
samples and the evaluation's held-out texts are text the model has not seen. Training runs on CPU
with one thread and fixed seeds (the same bytes on every run of the same interpreter) in about a
minute (idle, 2 cores), and is cached as safetensors + the vocabulary in the user cache folder
(:func:`rsmi_nn.app.sources.cache_dir`), keyed by a hash of the recipe and of the corpus.
Modules: ``transformer.h.*.mlp.act`` — the post-GELU MLP neurons, 2 × 512 units. Needs the
``minilm`` extra (``transformers``, ``tokenizers``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math

import torch

from graphs.atomic import atomic_save_tensors, atomic_write_json
from rsmi_nn.app.model_training import minibatches, reproducible_cpu, train_step

__all__ = ["RECIPE", "tiny_lm_source", "train_tiny_lm"]

logger = logging.getLogger(__name__)

RECIPE = {"recipe": 1, "n_layer": 2, "n_embd": 128, "n_head": 4, "n_inner": 512, "n_positions": 64,
          "max_vocab": 4000, "min_count": 2, "first_train_text": 512, "epochs": 8, "batch_size": 32, "lr": 2e-3,
          "seed": 0}
SPECIALS = ("[PAD]", "[UNK]", "[BOS]")
_HINT = "pip install 'rsmi-nn[minilm]'"


def _tokenizer(vocab: dict[str, int]):
    try:
        from tokenizers import Tokenizer, normalizers, pre_tokenizers, processors
        from tokenizers.models import WordLevel
        from transformers import PreTrainedTokenizerFast
    except ImportError as err:
        raise ImportError(f"the 'tiny-lm' source needs transformers and tokenizers; run {_HINT}") from err
    tok = Tokenizer(WordLevel(vocab, unk_token="[UNK]"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(single="[BOS] $A", special_tokens=[("[BOS]", vocab["[BOS]"])])
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", bos_token="[BOS]",
                                   model_input_names=["input_ids", "attention_mask"])


def _vocabulary(texts: list[str], recipe: dict) -> dict[str, int]:
    """Words (lower-cased, Whitespace pre-tokenizer) seen ``min_count`` times, most frequent first."""
    from collections import Counter

    from tokenizers import pre_tokenizers

    pre = pre_tokenizers.Whitespace()
    counts = Counter(w for t in texts for w, _ in pre.pre_tokenize_str(t.lower()))
    words = sorted((w for w, c in counts.items() if c >= recipe["min_count"]), key=lambda w: (-counts[w], w))
    return {w: i for i, w in enumerate([*SPECIALS, *words[: recipe["max_vocab"] - len(SPECIALS)]])}


def _model(recipe: dict, vocab_size: int):
    from transformers import GPT2Config, GPT2LMHeadModel

    config = GPT2Config(vocab_size=vocab_size, n_positions=recipe["n_positions"], n_embd=recipe["n_embd"],
                        n_layer=recipe["n_layer"], n_head=recipe["n_head"], n_inner=recipe["n_inner"],
                        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=2, eos_token_id=2,
                        pad_token_id=0)
    return GPT2LMHeadModel(config)


def _lm_loss(model, enc) -> torch.Tensor:
    logits = model(**enc).logits[:, :-1]
    target = enc["input_ids"][:, 1:].masked_fill(~enc["attention_mask"][:, 1:].bool(), -100)
    return torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), target.reshape(-1),
                                             ignore_index=-100)


def train_tiny_lm(recipe: dict, texts: list[str]):
    """Train the model on ``texts[first_train_text:]``; returns ``(model, tokenizer, vocab, stats)``.

    ``stats["heldout_ce"]``: the mean next-token cross-entropy (nats) on ``texts[:first_train_text]``.
    """
    train, unseen = texts[recipe["first_train_text"]:], texts[: recipe["first_train_text"]]
    vocab = _vocabulary(train, recipe)
    tokenizer = _tokenizer(vocab)
    kw = {"padding": True, "truncation": True, "max_length": recipe["n_positions"], "return_tensors": "pt"}
    with reproducible_cpu(recipe["seed"]):
        gen = torch.Generator().manual_seed(recipe["seed"])
        model = _model(recipe, len(vocab))
        opt = torch.optim.Adam(model.parameters(), lr=recipe["lr"])
        steps = recipe["epochs"] * math.ceil(len(train) / recipe["batch_size"])
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=recipe["lr"], total_steps=steps, pct_start=0.1)
        model.train()
        for rows in minibatches(len(train), recipe["batch_size"], recipe["epochs"], gen):
            loss = _lm_loss(model, dict(tokenizer([train[j] for j in rows.tolist()], **kw)))
            train_step(opt, loss, sched)
        model.eval()
        with torch.no_grad():
            losses = [float(_lm_loss(model, dict(tokenizer(unseen[i:i + 64], **kw))))
                      for i in range(0, len(unseen), 64)]
        logger.info("tiny-lm: %d epochs, last training loss %.3f", recipe["epochs"], float(loss.detach()))
    return model, tokenizer, vocab, {"heldout_ce": sum(losses) / len(losses)}


def tiny_lm_source(*, max_texts: int | None = None, epochs: int | None = None, cache: bool = True,
                   retrain: bool = False):
    """The ``tiny-lm`` :class:`~rsmi_nn.app.sources.Source` (see the module docstring).

    ``max_texts``: the first so many of the 512 sentences the model was not trained on (default all);
    ``epochs``: another training length (a separate cache entry); ``retrain``: ignore the cache.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from rsmi_nn.app.corpus import pydoc_corpus
    from rsmi_nn.app.sources import Source, cache_dir

    recipe = dict(RECIPE) if epochs is None else {**RECIPE, "epochs": int(epochs)}
    texts = pydoc_corpus()
    if len(texts) <= recipe["first_train_text"] + 64:
        raise ValueError(f"the bundled corpus has only {len(texts)} sentences on this Python; tiny-lm needs more than "
                         f"{recipe['first_train_text'] + 64}")
    digest = hashlib.sha256(json.dumps([recipe, texts], sort_keys=True).encode()).hexdigest()[:16]
    path = cache_dir() / f"tiny-lm-{digest}.safetensors"
    vocab_path = path.with_suffix(".json")
    model = None
    if cache and not retrain and path.is_file() and vocab_path.is_file():
        try:
            state = load_file(str(path))
            meta = json.loads(vocab_path.read_text(encoding="utf-8"))
            vocab, stats = meta["vocab"], meta["stats"]
            model = _model(recipe, len(vocab))
            model.load_state_dict(state, strict=False)  # the tied output weight is the embedding
            tokenizer = _tokenizer(vocab)
            logger.info("tiny-lm loaded from cache %s", path)
        except (SafetensorError, OSError, KeyError, RuntimeError, ValueError) as err:
            logger.warning("tiny-lm cache %s unreadable (%s); retraining", path, err)
            model = None
    if model is None:
        logger.info("training tiny-lm (once; cached in %s)", cache_dir())
        model, tokenizer, vocab, stats = train_tiny_lm(recipe, texts)
        if cache:
            state = {k: v.contiguous() for k, v in model.state_dict().items() if k != "lm_head.weight"}
            atomic_save_tensors(path, state)
            atomic_write_json(vocab_path, {"vocab": vocab, "stats": stats, "recipe": recipe}, sort_keys=True)
    model.eval()
    inputs = texts[: recipe["first_train_text"]]
    inputs = inputs[:max_texts] if max_texts is not None else inputs
    return Source(
        model=model, inputs=inputs, modules=["transformer.h.*.mlp.act"], tokenizer=tokenizer, kind="text",
        description=(f"tiny-lm: 2-layer GPT-2 (width 128, {len(vocab)}-word vocabulary) trained on the bundled corpus, "
                     f"held-out cross-entropy {stats['heldout_ce']:.2f} nats/token; MLP neurons (2 x 512) on "
                     f"{len(inputs)} sentences it was not trained on"),
        info={"task": "causal-lm", "heldout_ce": stats["heldout_ce"], "recipe": recipe,
              "cache": str(path) if cache else None},
        record_options={"max_length": recipe["n_positions"]},
    )
