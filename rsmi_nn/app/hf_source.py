"""Hugging Face models saved in a local folder: the source ``"hf:<folder>"``, loaded offline.

Any encoder or decoder-only model saved with ``save_pretrained`` together with its tokenizer
(``AutoModel`` + ``AutoTokenizer``, ``local_files_only=True``: nothing is ever downloaded) is
run over texts, one sample per real token (padding is masked out by the attention mask). The
modules recorded by default are chosen from the model's structure, not from a list of names:

``site="mlp"`` (default)
    the MLP's post-activation neurons of every layer: the output of the one activation module
    inside each layer's MLP — BERT-like ``encoder.layer.<i>.intermediate`` (its output *is*
    ``act(dense(x))``, so the parent is recorded and the unit names match the MiniLM source),
    GPT-2-like ``h.<i>.mlp.act``, LLaMA-like ``layers.<i>.mlp.act_fn``. For a gated MLP
    (``down(act(gate(x)) * up(x))``) the neuron is ``act(gate(x))``: the output of the
    nonlinearity, as in neuron-level studies of LLaMA-family models; the product with
    ``up(x)`` (the input of ``down_proj``) is not a module's output, so hooks cannot record it.
    A BERT-like model with L layers of intermediate size I gives L·I units.
``site="resid"``
    the residual stream after each layer (each layer block's output), L·d units.
``site="attn-out"``
    each attention block's output before it is added to the residual stream (BERT-like
    ``attention.output.dense``, GPT-2-like ``attn``, LLaMA-like ``self_attn``), L·d units.

Explicit ``modules`` (patterns) replace the site. Inputs: ``data=<file.txt>`` (one text per
non-empty line), ``texts=[...]``, or the bundled corpus (:func:`rsmi_nn.app.corpus.pydoc_corpus`).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from torch import nn

from rsmi_nn.app.sources import Source

__all__ = ["SITES", "hf_sites", "hf_source", "layer_stack", "load_hf_model", "max_tokens"]

logger = logging.getLogger(__name__)

SITES = ("mlp", "resid", "attn-out")
_HINT = "pip install 'rsmi-nn[minilm]'"
_MLP_WORDS = ("mlp", "ffn", "intermediate", "feed_forward", "feedforward", "densereludense", "fc")
_ATTN_WORDS = ("attn", "attention")
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "vocab.json", "tokenizer.model",
                    "spiece.model", "sentencepiece.bpe.model")
_NOT_NEURONS = (nn.Softmax, nn.LogSoftmax, nn.Softmin, nn.Softmax2d, nn.MultiheadAttention, nn.Identity)


def load_hf_model(folder: str | Path):
    """``(model, tokenizer)`` from a local folder, offline; the model in eval mode, the tokenizer padded on the right.

    A tokenizer without a padding token pads with its end-of-text (else unknown) token: padding
    is masked out of the samples by the attention mask, so its id does not matter.
    """
    path = Path(folder)
    if not path.is_dir():
        raise FileNotFoundError(f"hf: folder {str(path)!r} does not exist; give a folder written by save_pretrained")
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"no config.json in {str(path)!r}; save the model there with model.save_pretrained()")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    try:
        from transformers import AutoConfig, AutoModel, AutoTokenizer
    except ImportError as err:
        raise ImportError(f"the hf: source needs transformers; run {_HINT}") from err
    config = AutoConfig.from_pretrained(str(path), local_files_only=True)
    if getattr(config, "is_encoder_decoder", False):
        raise ValueError(f"{str(path)!r} holds an encoder-decoder model ({config.model_type}); the hf: source runs "
                         "encoders and decoder-only models — record its encoder with a python: factory instead")
    if not any((path / f).is_file() for f in _TOKENIZER_FILES):
        raise FileNotFoundError(f"no tokenizer files in {str(path)!r} (none of {', '.join(_TOKENIZER_FILES)}); save the "
                                "model's tokenizer next to it with tokenizer.save_pretrained()")
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    except (OSError, ValueError, TypeError) as err:
        raise FileNotFoundError(f"no usable tokenizer in {str(path)!r} ({' '.join(str(err).split())[:200]}); save it "
                                "next to the model with tokenizer.save_pretrained()") from None
    if not callable(tokenizer) or len(tokenizer) < 2:
        raise FileNotFoundError(f"the tokenizer in {str(path)!r} is empty; save the model's tokenizer with "
                                "tokenizer.save_pretrained()")
    model = _base_model(AutoModel, path)
    _check_vocab(model, tokenizer, path)
    if tokenizer.pad_token is None:
        fill = tokenizer.eos_token or tokenizer.unk_token
        if fill is None:
            raise ValueError(f"the tokenizer in {str(path)!r} has no pad, end-of-text or unknown token to pad with; "
                             "set tokenizer.pad_token and save it again")
        tokenizer.pad_token = fill
    tokenizer.padding_side = "right"
    return model, tokenizer


def _base_model(auto_model, path: Path) -> nn.Module:
    """The base model (a causal LM's head is left out, quietly); missing weights are a warning."""
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # the load report lists the dropped LM head as "unexpected"
    try:
        model, info = auto_model.from_pretrained(str(path), local_files_only=True, output_loading_info=True)
    finally:
        hf_logging.set_verbosity(level)
    missing = list(info.get("missing_keys") or [])
    if missing:
        logger.warning("%d weights of %s are not in %s and were initialised at random: %s", len(missing),
                       type(model).__name__, path, missing[:5])
    return model.eval()


def _check_vocab(model: nn.Module, tokenizer, path: Path) -> None:
    emb = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    rows = getattr(emb, "num_embeddings", None)
    if isinstance(rows, int) and len(tokenizer) > rows:
        raise ValueError(f"the tokenizer in {str(path)!r} has {len(tokenizer)} tokens but the model embeds only {rows}; "
                         "save the model's own tokenizer in the folder")


def max_tokens(model: nn.Module, tokenizer, cap: int = 128) -> int:
    """The most tokens per text the model accepts, at most ``cap``: its position table (less a RoBERTa-like
    padding offset) and the tokenizer's ``model_max_length``."""
    limits = [cap]
    tml = getattr(tokenizer, "model_max_length", None)
    if isinstance(tml, int) and 0 < tml < 10**6:
        limits.append(tml)
    cfg = model.config
    pos = getattr(cfg, "max_position_embeddings", None) or getattr(cfg, "n_positions", None)
    if isinstance(pos, int) and pos > 0:
        pad = getattr(getattr(model, "embeddings", None), "padding_idx", None)
        limits.append(pos - (pad + 1 if isinstance(pad, int) else 0))
    return max(1, min(limits))


def layer_stack(model: nn.Module) -> tuple[str, list[nn.Module]]:
    """``(name, layers)`` of the model's stack of transformer layers: the first ``ModuleList`` with as many
    entries as the config's layer count (else the longest ``ModuleList``)."""
    lists = [(n, m) for n, m in model.named_modules() if n and isinstance(m, nn.ModuleList) and len(m) > 0]
    cfg = getattr(model, "config", None)
    if cfg is not None and hasattr(cfg, "get_text_config"):
        cfg = cfg.get_text_config()
    n_layers = getattr(cfg, "num_hidden_layers", None) or getattr(cfg, "n_layer", None)
    chosen = [(n, m) for n, m in lists if len(m) == n_layers] or sorted(lists, key=lambda t: -len(t[1]))[:1]
    if not chosen:
        raise ValueError(f"{type(model).__name__} has no ModuleList of layers; pass modules=[patterns] (--modules)")
    name, layers = chosen[0]
    return name, list(layers)


def _is_activation(m: nn.Module) -> bool:
    if any(True for _ in m.children()) or isinstance(m, _NOT_NEURONS):
        return False
    mod = type(m).__module__
    return mod == "torch.nn.modules.activation" or mod.endswith(".activations") or type(m).__name__.endswith("Activation")


def _mlp_site(stack: str, i: int, layer: nn.Module) -> str:
    acts = [n for n, m in layer.named_modules() if n and _is_activation(m)]
    in_mlp = [n for n in acts if any(w in n.lower() for w in _MLP_WORDS) and not any(w in n.lower() for w in _ATTN_WORDS)]
    found = in_mlp if in_mlp else acts
    if len(found) != 1:
        raise ValueError(
            f"layer {stack}.{i} has {len(found)} MLP activation modules {found or acts}, expected one; "
            "pass the modules to record with --modules (e.g. 'layers.*.mlp.act_fn')"
        )
    name = found[0]
    parent, _, _ = name.rpartition(".")
    if parent.rsplit(".", 1)[-1] == "intermediate":  # BERT-like: intermediate(x) = act(dense(x))
        name = parent
    return f"{stack}.{i}.{name}"


def _attn_site(stack: str, i: int, layer: nn.Module) -> str:
    children = [n for n, _ in layer.named_children() if any(w in n.lower() for w in _ATTN_WORDS)]
    if not children:
        raise ValueError(f"layer {stack}.{i} has no attention child module (names with 'attn'/'attention'); "
                         "pass the modules to record with --modules")
    attn = children[0]
    subs = dict(layer.named_modules())
    if f"{attn}.output.dense" in subs:  # BERT-like: output = LayerNorm(dense(h) + residual)
        return f"{stack}.{i}.{attn}.output.dense"
    return f"{stack}.{i}.{attn}"


def hf_sites(model: nn.Module, site: str = "mlp") -> list[str]:
    """Names of the modules to record for ``site`` (``"mlp"``, ``"resid"`` or ``"attn-out"``), one per layer."""
    if site not in SITES:
        raise ValueError(f"site={site!r} is not a recording site; choose one of {', '.join(SITES)}")
    stack, layers = layer_stack(model)
    if site == "resid":
        return [f"{stack}.{i}" for i in range(len(layers))]
    if site == "attn-out":
        return [_attn_site(stack, i, layer) for i, layer in enumerate(layers)]
    names = [_mlp_site(stack, i, layer) for i, layer in enumerate(layers)]
    lookup = dict(model.named_modules(remove_duplicate=False))
    if len({id(lookup[n]) for n in names}) != len(names):
        raise ValueError(f"the layers of {type(model).__name__} share one activation module, so a hook cannot tell "
                         "them apart; pass the modules to record with --modules")
    return names


def _texts(data, texts, max_texts: int | None, corpus: str) -> tuple[list[str], str]:
    if data is not None and texts is not None:
        raise ValueError("give either data=<file.txt> or texts=[...], not both")
    if data is not None:
        from rsmi_nn.app.user_models import load_texts

        texts, corpus = load_texts(data), Path(data).name
    elif texts is not None:
        texts, corpus = [str(t) for t in texts], "user texts"
        if not texts:
            raise ValueError("texts is empty; pass at least one text")
    elif corpus == "sentences":
        from rsmi_nn.app.corpus import pydoc_corpus

        return pydoc_corpus(max_texts=max_texts), "pydoc_data.topics sentences (Python's bundled help texts)"
    elif corpus == "passages":
        from rsmi_nn.app.corpus import pydoc_passages

        return pydoc_passages(max_texts=max_texts), "pydoc_data.topics passages (all of Python's bundled help texts)"
    else:
        raise ValueError(f"corpus={corpus!r} is not a bundled corpus; choose 'sentences' or 'passages'")
    return (texts[:max_texts] if max_texts is not None else texts), corpus


def hf_source(folder: str | Path, *, data=None, texts=None, max_texts: int | None = None, corpus: str = "sentences",
              site: str | None = None, modules=None, model=None, tokenizer=None) -> Source:
    """The source ``"hf:<folder>"``: a locally saved Hugging Face model over texts, one sample per token.

    Parameters
    ----------
    folder : written by ``model.save_pretrained`` and ``tokenizer.save_pretrained``.
    data : a ``.txt`` file, one text per non-empty line; ``texts``: the texts themselves; neither:
        the bundled corpus, ``corpus="sentences"`` (:func:`~rsmi_nn.app.corpus.pydoc_corpus`, ~61 000
        MiniLM tokens) or ``"passages"`` (:func:`~rsmi_nn.app.corpus.pydoc_passages`, ~126 000).
        ``max_texts``: keep the first so many.
    site : ``"mlp"`` (default), ``"resid"`` or ``"attn-out"`` (see the module docstring);
        ``modules`` (pattern or patterns) replaces it.
    model, tokenizer : already loaded from ``folder`` (the MiniLM source passes its own).
    """
    if modules is not None and site is not None:
        raise ValueError("give either site= (--site) or modules= (--modules), not both")
    if model is None or tokenizer is None:
        model, tokenizer = load_hf_model(folder)
    texts, corpus = _texts(data, texts, max_texts, corpus)
    if modules is None:
        modules, what = hf_sites(model, site or "mlp"), f"{site or 'mlp'} site"
    else:
        modules, what = ([modules] if isinstance(modules, str) else list(modules)), "modules"
    logger.info("hf:%s: %s %s -> %d module(s) %s", folder, type(model).__name__, what, len(modules), modules[:3])
    return Source(
        model=model,
        inputs=texts,
        modules=modules,
        tokenizer=tokenizer,
        kind="text",
        description=f"{type(model).__name__} from {Path(folder).name} ({what}, {len(modules)} modules) on "
                    f"{len(texts)} {corpus}",
        info={"model_path": str(folder), "corpus": corpus, "site": site or ("mlp" if what != "modules" else None)},
        record_options={"max_length": max_tokens(model, tokenizer)},
    )
