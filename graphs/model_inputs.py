"""Model inputs for recording, batch by batch: a tensor, token ids, or texts through a tokenizer.

Each kind runs the model on one batch of input indices and turns the captured outputs into
samples: one row per input for a tensor ``(n_inputs, ...)``; for token ids ``(n_inputs, seq)``
(an integer tensor, with an optional ``attention_mask`` of the same shape) one row per real
token when every recorded output is ``(batch, seq, ...)``, else one per input; one row per
real token (or per text, averaged) for texts. A ``reduction`` that cannot apply (no token
dimension) is an error. :func:`graphs.record_activations` drives all through the same loop;
each kind also knows the manifest fields and the inputs file that describe it.
"""

from __future__ import annotations

import inspect

import torch
from torch import nn

from estimators.validation import as_tensor, check_positive_int

__all__ = ["TensorInputs", "TextInputs", "model_inputs"]

TEXT_SAMPLE_KEYS = ["input_index", "token_position", "token_id", "char_start", "char_end"]
TOKEN_SAMPLE_KEYS = ["input_index", "token_position", "token_id"]


def model_inputs(inputs, tokenizer, *, batch_size: int, sort_window: int | None, reduction: str | None,
                 max_length: int, keep_special_tokens: bool, attention_mask=None) -> TensorInputs | TextInputs:
    """Wrap ``inputs`` (a tensor ``(n_inputs, ...)``, token ids ``(n_inputs, seq)`` or a list of texts) after
    checking them; ``reduction=None`` means one sample per token where there are tokens, else per input."""
    is_text = isinstance(inputs, (list, tuple)) and len(inputs) > 0 and all(isinstance(s, str) for s in inputs)
    if is_text:
        if tokenizer is None:
            raise ValueError("inputs are texts but tokenizer=None; pass the model's tokenizer (e.g. source.tokenizer)")
    else:
        if isinstance(inputs, (list, tuple)) and any(isinstance(s, str) for s in inputs):
            raise ValueError("inputs mixes strings and other values; pass a list of strings or one tensor")
        x = as_tensor(inputs, name="inputs", dtype=None if isinstance(inputs, torch.Tensor) else torch.float32)
        if x.ndim == 0 or x.shape[0] == 0:
            raise ValueError(f"inputs must be a tensor of shape (n_inputs, ...) with n_inputs >= 1, got {tuple(x.shape)}")
    if sort_window is not None:
        sort_window = check_positive_int(sort_window, name="sort_window")
    if not is_text:
        return TensorInputs(x, batch_size, attention_mask=attention_mask, reduction=reduction)
    if attention_mask is not None:
        raise ValueError("attention_mask applies to token-id tensors; texts get theirs from the tokenizer")
    return TextInputs(list(inputs), tokenizer, window=sort_window or 4 * batch_size, reduction=reduction or "token",
                      max_length=max_length, keep_special_tokens=keep_special_tokens)


def _check_mask(mask, x: torch.Tensor) -> torch.Tensor:
    """The ``attention_mask`` of token ids ``x`` as a BoolTensor of ``x``'s shape (values 0/1 or bool)."""
    if x.is_floating_point() or x.is_complex() or x.ndim != 2:
        raise ValueError(f"attention_mask applies to token ids, an integer tensor (n_inputs, seq); the inputs are "
                         f"{x.dtype} of shape {tuple(x.shape)}")
    m = torch.as_tensor(mask)
    if tuple(m.shape) != tuple(x.shape):
        raise ValueError(f"attention_mask has shape {tuple(m.shape)} but the token ids have {tuple(x.shape)}; "
                         "give one 0/1 entry per token")
    if m.is_floating_point() or not bool(((m == 0) | (m == 1)).all()):
        raise ValueError("attention_mask must hold 0/1 (or bool) per token: 1 = a real token, 0 = padding")
    if not bool(m.bool().any(1).all()):
        raise ValueError("attention_mask has an input without any real token; drop it or fix its mask")
    return m.bool()


class TensorInputs:
    """A tensor ``(n_inputs, ...)``: one sample per input, in input order (a window is one batch).

    Token ids (an integer tensor ``(n_inputs, seq)``) give one sample per real token (by
    ``attention_mask``, default all) when every recorded output is ``(batch, seq, ...)``; the
    model is called as ``model(ids)``, or ``model(ids, attention_mask=mask)`` when a mask is given
    and its forward takes ``attention_mask`` (otherwise the mask only picks the samples).
    """

    max_length = keep_special_tokens = None
    truncated = 0

    def __init__(self, x: torch.Tensor, batch_size: int, *, attention_mask=None, reduction: str | None = None):
        self.x = x
        self.is_ids = not (x.is_floating_point() or x.is_complex()) and x.dtype != torch.bool and x.ndim == 2
        self.mask = None if attention_mask is None else _check_mask(attention_mask, x)
        self.num_inputs = int(x.shape[0])
        self.window = batch_size
        self.special_tokens: dict[str, str] = {}
        self.requested = reduction
        self.per_token: bool | None = None  # decided from the first batch's outputs
        if reduction is not None and not self.is_ids:
            raise ValueError(
                f"reduction={reduction!r} needs a token dimension, but the inputs are {x.dtype} of shape "
                f"{tuple(x.shape)} (one sample per input); token ids are an integer tensor (n_inputs, seq) — "
                "drop the reduction"
            )

    @property
    def kind(self) -> str:
        return "tokens" if self.per_token else "tensor"

    @property
    def reduction(self) -> str | None:
        return (self.requested or "token") if self.per_token else None

    @property
    def sample_keys(self) -> list[str]:
        return TOKEN_SAMPLE_KEYS if self.per_token and self.reduction == "token" else ["input_index"]

    def order(self, lo: int, hi: int) -> list[int]:
        """Input indices of the window ``[lo, hi)`` in the order they are run."""
        return list(range(lo, hi))

    def run(self, model: nn.Module, idx: torch.Tensor, acts: dict, names: list[str], device, dtype):
        """Run the inputs ``idx`` (consecutive); returns (per-module flat outputs, per-sample keys)."""
        start = int(idx[0])
        x = self.x[start : start + len(idx)]
        mask = None if self.mask is None else self.mask[start : start + len(idx)]
        _call(model, x, mask, device)
        if self.per_token is None:
            self.per_token = self._token_outputs(acts, names, x.shape)
        if not self.per_token:
            return _flatten_inputs(acts, names, len(idx), dtype), {"input_index": idx}
        mask = torch.ones(x.shape, dtype=torch.bool) if mask is None else mask
        flat = _flatten_tokens(acts, names, x.shape, mask, self.reduction, dtype)
        if self.reduction == "mean":
            return flat, {"input_index": idx}
        pos = torch.arange(x.shape[1]).expand(x.shape)
        keys = {"input_index": idx.unsqueeze(1).expand(x.shape)[mask], "token_position": pos[mask],
                "token_id": x[mask].long()}
        return flat, keys

    def _token_outputs(self, acts: dict, names: list[str], ids_shape) -> bool:
        """Whether the outputs are per token: all ``(batch, seq, ...)`` for token ids; an error when mixed."""
        if not self.is_ids:
            return False
        shaped = {n: tuple(_captured(acts, n).shape[:2]) == tuple(ids_shape) and _captured(acts, n).ndim >= 3
                  for n in names}
        if all(shaped.values()):
            return True
        if any(shaped.values()) or self.requested is not None or self.mask is not None:
            flat = [n for n, ok in shaped.items() if not ok]
            raise ValueError(
                f"token ids {tuple(ids_shape)} give one sample per token only when every recorded output is "
                f"(batch, seq, ...), but {flat[:3]} output {[tuple(acts[n].shape) for n in flat[:3]]}"
                + ("; record modules with a token dimension" if any(shaped.values()) or self.mask is not None
                   else f"; reduction={self.requested!r} cannot apply — drop it or record modules with a token dimension")
            )
        return False

    def write_inputs(self, writer) -> str:
        return writer.write_inputs_tensor(self.x)


def _expected_dtype(model: nn.Module) -> str:
    """What the model's first parameterised layer takes: token ids for an embedding, else its weights' dtype."""
    for name, m in model.named_modules():
        params = list(m.parameters(recurse=False))
        if not params:
            continue
        if isinstance(m, (nn.Embedding, nn.EmbeddingBag)):
            return f"integer token ids (torch.long; its first layer {name!r} is an Embedding)"
        return f"{params[0].dtype} (its first layer {name or type(m).__name__!r} holds {params[0].dtype} weights)"
    return "the dtype its forward expects"


def _expected_shape(model: nn.Module) -> str:
    """What the model's first parameterised layer takes, in words (features, channels)."""
    for name, m in model.named_modules():
        if isinstance(m, nn.Linear):
            return f"its first layer {name!r} is a Linear taking {m.in_features} features per sample"
        if isinstance(m, nn.modules.conv._ConvNd):
            return f"its first layer {name!r} is a convolution taking {m.in_channels} input channels"
        if list(m.parameters(recurse=False)):
            break
    return "the inputs do not have the shape the model's forward expects"


def _takes_mask(model: nn.Module) -> bool:
    """Whether ``model.forward`` accepts ``attention_mask=`` (by name or through ``**kwargs``)."""
    try:
        params = inspect.signature(model.forward).parameters.values()
    except (TypeError, ValueError):
        return True
    return any(p.name == "attention_mask" or p.kind is inspect.Parameter.VAR_KEYWORD for p in params)


def _call(model: nn.Module, x: torch.Tensor, mask, device) -> None:
    """``model(x)``, or ``model(x, attention_mask=mask)`` when its forward takes one (else the mask only picks the
    samples); a dtype the model rejects is a ValueError naming the dtype it expects."""
    x = x.to(device)
    try:
        if mask is None or not _takes_mask(model):
            model(x)
        else:
            model(x, attention_mask=mask.to(device=device, dtype=torch.long))
    except (RuntimeError, TypeError, IndexError) as err:
        msg = " ".join(str(err).split())
        if isinstance(err, IndexError) and "index out of range" in msg and not x.is_floating_point():
            raise ValueError(f"token ids of the inputs range over [{int(x.min())}, {int(x.max())}], beyond the "
                             f"model's embedding table ({msg[:120]}); pass ids below its vocabulary size") from err
        if "shapes cannot be multiplied" in msg or "size mismatch" in msg or "must match the size" in msg:
            raise ValueError(f"the model rejected inputs of shape {tuple(x.shape)} ({msg[:160]}); "
                             f"{_expected_shape(model)} — check that the data matches the model") from err
        words = ("dtype", "scalar type", "Input type", "Long", "Float", "Double", "Half", "BFloat16", "Int")
        if not any(w in msg for w in words):
            raise
        raise ValueError(
            f"the model rejected the inputs of dtype {x.dtype}, shape {tuple(x.shape)} ({msg[:160]}); it expects "
            f"{_expected_dtype(model)} — save the data in that dtype"
        ) from err


class TextInputs:
    """Texts: one sample per real token (``reduction="token"``) or per text (``"mean"``).

    Inside a window of ``window`` texts, the shortest run first so batches carry little
    padding; :func:`graphs.record_activations` writes the samples back in input order.
    """

    kind = "text"
    sample_keys = TEXT_SAMPLE_KEYS

    def __init__(self, texts: list[str], tokenizer, *, window: int, reduction: str, max_length: int,
                 keep_special_tokens: bool):
        self.texts, self.tokenizer, self.window = texts, tokenizer, window
        self.num_inputs = len(texts)
        self.reduction, self.max_length, self.keep_special_tokens = reduction, max_length, keep_special_tokens
        self.truncated = 0  # texts longer than max_length tokens
        self.special_tokens: dict[str, str] = {}  # id -> token string of the special tokens seen

    def order(self, lo: int, hi: int) -> list[int]:
        """Indices of the texts ``[lo, hi)``, shortest first (ties in input order); counts truncations."""
        lengths = [len(ids) for ids in self.tokenizer(self.texts[lo:hi], truncation=False)["input_ids"]]
        self.truncated += sum(n > self.max_length for n in lengths)
        return sorted(range(lo, hi), key=lambda i: (min(lengths[i - lo], self.max_length), i))

    def run(self, model: nn.Module, idx: torch.Tensor, acts: dict, names: list[str], device, dtype):
        """Tokenise and run the texts ``idx``; returns (per-module flat outputs, per-sample keys)."""
        enc, extra = _tokenize(self.tokenizer, [self.texts[i] for i in idx.tolist()], self.max_length)
        model(**{k: v.to(device) for k, v in enc.items()})
        mask = self._sample_mask(enc, extra["special"])
        flat = _flatten_tokens(acts, names, enc["input_ids"].shape, mask, self.reduction, dtype)
        return flat, _text_keys(idx, enc, extra["offsets"], mask, self.reduction)

    def _sample_mask(self, enc: dict, special: torch.Tensor | None) -> torch.Tensor:
        """BoolTensor ``[batch, tokens]`` of the tokens that are samples; notes the special tokens seen."""
        mask = enc["attention_mask"].bool()
        if special is not None:
            if not self.keep_special_tokens:
                mask &= ~special
            for tid in enc["input_ids"][mask & special].unique().tolist():
                self.special_tokens.setdefault(str(tid), self.tokenizer.convert_ids_to_tokens(int(tid)))
        return mask

    def write_inputs(self, writer) -> str:
        return writer.write_inputs_text(self.texts)


def _tokenize(tokenizer, texts: list[str], max_length: int):
    """Tokenise one batch; returns (model kwargs, extra per-token info: special-token mask, char offsets)."""
    kwargs = {"padding": True, "truncation": True, "max_length": max_length, "return_tensors": "pt",
              "return_special_tokens_mask": True}
    fast = bool(getattr(tokenizer, "is_fast", False))
    if fast:
        kwargs["return_offsets_mapping"] = True
    enc = tokenizer(texts, **kwargs)
    extra = {"special": enc.pop("special_tokens_mask").bool() if "special_tokens_mask" in enc else None,
             "offsets": enc.pop("offset_mapping") if "offset_mapping" in enc else None}
    enc = dict(enc)
    if "attention_mask" not in enc:
        raise ValueError("the tokenizer returned no attention_mask; use a tokenizer that pads with a mask")
    return enc, extra


def _captured(acts: dict, name: str) -> torch.Tensor:
    if name not in acts:
        raise ValueError(f"module {name!r} did not run in the forward pass; choose modules the model calls")
    return acts[name]


def _flatten_tokens(acts, names, ids_shape, mask, reduction, dtype):
    """Per module: ([samples, units], per-sample shape, source dtype) from [B, T, ...] outputs."""
    bsz, seq = ids_shape
    out = {}
    for name in names:
        t = _captured(acts, name)
        if t.ndim >= 2 and t.shape[0] == bsz * seq and tuple(t.shape[:2]) != (bsz, seq):
            t = t.reshape(bsz, seq, *t.shape[1:])  # tokens flattened into rows, [B*T, ...] (OPT's MLP)
        if t.ndim < 3 or tuple(t.shape[:2]) != (bsz, seq):
            raise ValueError(
                f"module {name!r} output has shape {tuple(t.shape)}, expected (batch={bsz}, tokens={seq}, ...) "
                "for per-token capture; choose modules with a token dimension"
            )
        shape = tuple(t.shape[2:])
        t = t.reshape(bsz, seq, -1)
        m = mask.to(t.device)
        if reduction == "token":
            flat = t[m]
        else:  # mean over real tokens, accumulated in at least float32
            acc = torch.promote_types(t.dtype, torch.float32)
            w = m.to(acc).unsqueeze(-1)
            flat = (t.to(acc) * w).sum(1) / w.sum(1).clamp_min(1)
        out[name] = (flat.to("cpu", dtype), shape, t.dtype)
    return out


def _flatten_inputs(acts, names, bsz, dtype):
    """Per module: ([bsz, units], per-sample shape, source dtype) from [B, ...] outputs."""
    out = {}
    for name in names:
        t = _captured(acts, name)
        if t.ndim < 1 or t.shape[0] != bsz:
            raise ValueError(
                f"module {name!r} output has shape {tuple(t.shape)}, expected a leading batch dimension of {bsz}"
            )
        out[name] = (t.reshape(bsz, -1).to("cpu", dtype), tuple(t.shape[1:]), t.dtype)
    return out


def _text_keys(idx, enc, offsets, mask, reduction) -> dict[str, torch.Tensor]:
    """Per-sample int64 keys of one text batch (``idx``: the batch's input indices)."""
    bsz, seq = enc["input_ids"].shape
    if reduction == "mean":
        neg = torch.full((bsz,), -1, dtype=torch.long)
        return {"input_index": idx, "token_position": neg, "token_id": neg, "char_start": neg, "char_end": neg}
    index = idx.unsqueeze(1).expand(bsz, seq)
    pos = torch.arange(seq).unsqueeze(0).expand(bsz, seq)
    if offsets is None:
        cs = ce = torch.full((bsz, seq), -1, dtype=torch.long)
    else:
        cs, ce = offsets[..., 0].long(), offsets[..., 1].long()
    return {"input_index": index[mask], "token_position": pos[mask], "token_id": enc["input_ids"][mask].long(),
            "char_start": cs[mask], "char_end": ce[mask]}
