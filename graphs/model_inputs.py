"""Model inputs for recording, batch by batch: a tensor, or texts through a tokenizer.

Each kind runs the model on one batch of input indices and turns the captured outputs into
samples: one row per input for a tensor ``(n_inputs, ...)``; one row per real token (or per
text, averaged) for texts. :func:`graphs.record_activations` drives both through the same
loop; each kind also knows the manifest fields and the inputs file that describe it.
"""

from __future__ import annotations

import torch
from torch import nn

from estimators.validation import as_tensor, check_positive_int

__all__ = ["TensorInputs", "TextInputs", "model_inputs"]

TEXT_SAMPLE_KEYS = ["input_index", "token_position", "token_id", "char_start", "char_end"]


def model_inputs(inputs, tokenizer, *, batch_size: int, sort_window: int | None, reduction: str,
                 max_length: int, keep_special_tokens: bool) -> TensorInputs | TextInputs:
    """Wrap ``inputs`` (a tensor ``(n_inputs, ...)`` or a list of texts) after checking them."""
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
        return TensorInputs(x, batch_size)
    return TextInputs(list(inputs), tokenizer, window=sort_window or 4 * batch_size, reduction=reduction,
                      max_length=max_length, keep_special_tokens=keep_special_tokens)


class TensorInputs:
    """A tensor ``(n_inputs, ...)``: one sample per input, in input order (a window is one batch)."""

    kind = "tensor"
    sample_keys = ["input_index"]
    reduction = max_length = keep_special_tokens = None
    truncated = 0

    def __init__(self, x: torch.Tensor, batch_size: int):
        self.x = x
        self.num_inputs = int(x.shape[0])
        self.window = batch_size
        self.special_tokens: dict[str, str] = {}

    def order(self, lo: int, hi: int) -> list[int]:
        """Input indices of the window ``[lo, hi)`` in the order they are run."""
        return list(range(lo, hi))

    def run(self, model: nn.Module, idx: torch.Tensor, acts: dict, names: list[str], device, dtype):
        """Run the inputs ``idx`` (consecutive); returns (per-module flat outputs, per-sample keys)."""
        start = int(idx[0])
        model(self.x[start : start + len(idx)].to(device))
        return _flatten_inputs(acts, names, len(idx), dtype), {"input_index": idx}

    def write_inputs(self, writer) -> str:
        return writer.write_inputs_tensor(self.x)


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
