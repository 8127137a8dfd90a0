"""Record activations of any ``torch.nn.Module`` through forward hooks chosen by name patterns.

Two entry points:

- :func:`capture` — a context manager; inside it, the outputs of the matched modules are
  kept in a dict (hooks exist only inside the ``with`` block and are removed in ``finally``)::

      with capture(model, "encoder.layer.*.intermediate") as acts:
          model(**batch)
      acts["encoder.layer.3.intermediate"]          # [batch, tokens, 1536]

- :func:`record_activations` — runs a model over many inputs batch by batch and streams
  the flattened outputs to an on-disk :class:`~graphs.store.ActivationStore` (shards +
  manifest). Memory does not grow with the number of samples.

Module names are those of ``model.named_modules()``; patterns use :mod:`fnmatch`
(``*`` also matches dots, so ``"hidden.*"`` matches ``hidden.0`` *and* ``hidden.0.1``).
"""

from __future__ import annotations

import difflib
import fnmatch
import logging
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import torch
from torch import nn
from tqdm.auto import tqdm

from estimators.device import resolve_device
from estimators.validation import as_tensor, check_choice, check_positive_int
from graphs.store import ActivationStore, StoreWriter

__all__ = ["capture", "first_tensor", "match_modules", "record_activations"]

logger = logging.getLogger(__name__)

ModuleFilter = str | Sequence[str] | Callable[[str], bool]


def match_modules(model: nn.Module, modules: ModuleFilter) -> list[str]:
    """Names of the submodules of ``model`` selected by ``modules``, in ``named_modules`` order.

    Parameters
    ----------
    modules : an fnmatch pattern, a list of patterns, or a predicate ``name -> bool``.
        The root module (name ``""``) is never matched.

    Raises
    ------
    ValueError if a pattern (or the predicate) matches no module; the message lists the
    closest module names.
    """
    names = [n for n, _ in model.named_modules() if n]
    if callable(modules) and not isinstance(modules, str):
        chosen = [n for n in names if modules(n)]
        if not chosen:
            raise ValueError(
                f"the module predicate matched none of the {len(names)} modules of {type(model).__name__} "
                f"(first names: {names[:8]}); fix the predicate"
            )
        return chosen
    patterns = [modules] if isinstance(modules, str) else list(modules)
    if not patterns or not all(isinstance(p, str) for p in patterns):
        raise ValueError(f"modules must be a pattern, a non-empty list of patterns or a predicate, got {modules!r}")
    chosen = set()
    for pat in patterns:
        hits = [n for n in names if fnmatch.fnmatchcase(n, pat)]
        if not hits:
            close = difflib.get_close_matches(pat, names, n=5, cutoff=0.3)
            hint = f"closest module names: {close}" if close else f"some module names: {names[:8]}"
            raise ValueError(f"module pattern {pat!r} matches no module of {type(model).__name__}; {hint}")
        chosen.update(hits)
    return [n for n in names if n in chosen]


def first_tensor(output):
    """The tensor a hook keeps from a module's output.

    A tensor is kept as is; for a tuple/list (e.g. attention blocks returning
    ``(hidden, weights)``) or a dict / ``ModelOutput``, the first tensor found, depth first.
    Returns ``None`` when there is no tensor.
    """
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, dict):
        output = list(output.values())
    if isinstance(output, (tuple, list)):
        for item in output:
            t = first_tensor(item)
            if t is not None:
                return t
    return None


@contextmanager
def capture(
    model: nn.Module,
    modules: ModuleFilter,
    *,
    device=None,
    dtype: torch.dtype | None = None,
) -> Iterator[dict[str, torch.Tensor]]:
    """Keep the outputs of the modules matching ``modules`` while inside the ``with`` block.

    Parameters
    ----------
    model : any ``torch.nn.Module``.
    modules : fnmatch pattern(s) or a predicate on module names (see :func:`match_modules`).
    device, dtype : where/how outputs are stored (``t.detach().to(device, dtype)``);
        ``None`` keeps the output's own.

    Yields
    ------
    dict mapping module name to its latest output (a module called twice keeps the last
    call), copied so that later in-place operations cannot alter it. Hooks are removed
    when the block exits, also on an exception.
    """
    names = match_modules(model, modules)
    lookup = dict(model.named_modules())
    acts: dict[str, torch.Tensor] = {}
    handles = []

    def make_hook(name: str):
        def hook(_module, _inputs, output):
            t = first_tensor(output)
            if t is None:
                raise ValueError(f"module {name!r} returned {type(output).__name__} without a tensor; capture another module")
            kept = t.detach().to(device=device, dtype=dtype)
            if kept.data_ptr() == t.data_ptr():
                kept = kept.clone()  # a later in-place op (ReLU(inplace=True)) must not change what we kept
            acts[name] = kept

        return hook

    try:
        for name in names:
            handles.append(lookup[name].register_forward_hook(make_hook(name)))
        yield acts
    finally:
        for h in handles:
            h.remove()


def record_activations(
    model: nn.Module,
    inputs,
    modules: ModuleFilter,
    out,
    batch_size: int = 64,
    *,
    tokenizer=None,
    reduction: str = "token",
    max_length: int = 128,
    keep_special_tokens: bool = True,
    sort_window: int | None = None,
    shard_size: int | None = None,
    dtype: torch.dtype = torch.float32,
    device="auto",
    input_shape: Sequence[int] | None = None,
    metadata: dict | None = None,
    progress: bool = True,
    overwrite: bool = False,
) -> ActivationStore:
    """Run ``model`` over ``inputs`` and stream the matched modules' outputs to a store in ``out``.

    Each matched module's output is flattened to units named ``"<module>:<i>"`` (row-major
    over the per-sample shape) and the modules are concatenated in model order.

    Parameters
    ----------
    model : the network; moved to ``device`` and run in eval mode under ``torch.inference_mode()``
        (its training flag is restored afterwards).
    inputs : a tensor of shape ``(n_inputs, ...)`` batched along dim 0 — one sample per input; or
        a list of strings for a Hugging Face model with ``tokenizer`` — one sample per real
        (non-padding, by the attention mask) token, or per text with ``reduction="mean"``.
    modules : fnmatch pattern(s) or predicate selecting modules (e.g. ``"encoder.layer.*.intermediate"``).
        For text, every matched output must be ``(batch, tokens, ...)``.
    out : folder for the store; must be empty or new unless ``overwrite=True``.
    batch_size : inputs per forward pass.
    tokenizer : a Hugging Face tokenizer (text inputs only); a fast one also gives the token spans.
    reduction : ``"token"`` (one sample per token) or ``"mean"`` (average over each text's real tokens).
    max_length : texts are truncated to this many tokens (a warning counts them).
    keep_special_tokens : whether ``[CLS]``/``[SEP]``-like tokens count as samples/enter the mean.
    sort_window : texts are run in windows of this many inputs (default ``4 * batch_size``), shortest
        first inside a window so batches carry little padding (2x faster on MiniLM's corpus); the
        samples are written back in input order. Memory holds one window's activations.
    shard_size : rows per shard; default: shards of about 64 MiB.
    dtype : storage dtype of the activations (float32 by default).
    device : where the model runs; ``"auto"`` picks CUDA when present.
    input_shape : per-input shape used by :meth:`ActivationStore.examples` (e.g. ``(8, 8)`` for digits).
    metadata : JSON-able dict stored in the manifest under ``"metadata"``.
    progress : show a tqdm bar over batches.
    overwrite : replace an existing store in ``out``.

    Returns
    -------
    ActivationStore opened on ``out``. The manifest is written last, so an interrupted
    recording leaves a folder that :meth:`ActivationStore.open` refuses.
    """
    batch_size = check_positive_int(batch_size, name="batch_size")
    max_length = check_positive_int(max_length, name="max_length")
    if shard_size is not None:
        shard_size = check_positive_int(shard_size, name="shard_size")
    check_choice(reduction, ("token", "mean"), name="reduction")
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    names = match_modules(model, modules)
    dev = resolve_device(device)

    is_text = isinstance(inputs, (list, tuple)) and len(inputs) > 0 and all(isinstance(s, str) for s in inputs)
    if is_text:
        if tokenizer is None:
            raise ValueError("inputs are texts but tokenizer=None; pass the model's tokenizer (e.g. source.tokenizer)")
        texts = list(inputs)
        n_inputs = len(texts)
    else:
        if isinstance(inputs, (list, tuple)) and any(isinstance(s, str) for s in inputs):
            raise ValueError("inputs mixes strings and other values; pass a list of strings or one tensor")
        x = as_tensor(inputs, name="inputs", dtype=None if isinstance(inputs, torch.Tensor) else torch.float32)
        if x.ndim == 0 or x.shape[0] == 0:
            raise ValueError(f"inputs must be a tensor of shape (n_inputs, ...) with n_inputs >= 1, got {tuple(x.shape)}")
        n_inputs = x.shape[0]
    if sort_window is not None:
        sort_window = check_positive_int(sort_window, name="sort_window")
    window = (sort_window or 4 * batch_size) if is_text else batch_size
    writer = StoreWriter(out, shard_size=shard_size, overwrite=overwrite)
    module_info: list[dict] | None = None
    special_tokens: dict[str, str] = {}
    truncated = 0
    was_training = model.training
    model.to(dev).eval()
    bar = tqdm(total=n_inputs, desc="recording", disable=not progress, unit="input")
    try:
        with torch.inference_mode(), capture(model, names) as acts:
            for w_lo in range(0, n_inputs, window):
                w_hi = min(n_inputs, w_lo + window)
                if is_text:  # shortest first inside the window: less padding, same samples
                    lengths = [len(ids) for ids in tokenizer(texts[w_lo:w_hi], truncation=False)["input_ids"]]
                    truncated += sum(n > max_length for n in lengths)
                    order = sorted(range(w_lo, w_hi), key=lambda i: (min(lengths[i - w_lo], max_length), i))
                else:
                    order = list(range(w_lo, w_hi))
                parts = []
                for b in range(0, len(order), batch_size):
                    idx = torch.tensor(order[b : b + batch_size], dtype=torch.long)
                    acts.clear()
                    if is_text:
                        enc, extra = _tokenize(tokenizer, [texts[i] for i in idx.tolist()], max_length)
                        model(**{k: v.to(dev) for k, v in enc.items()})
                        mask = enc["attention_mask"].bool()
                        if extra["special"] is not None:
                            if not keep_special_tokens:
                                mask &= ~extra["special"]
                            for tid in enc["input_ids"][mask & extra["special"]].unique().tolist():
                                special_tokens.setdefault(str(tid), tokenizer.convert_ids_to_tokens(int(tid)))
                        flat = _flatten_tokens(acts, names, enc["input_ids"].shape, mask, reduction, dtype)
                        keys = _text_keys(idx, enc, extra, mask, reduction)
                    else:
                        model(x[w_lo + b : w_lo + b + len(idx)].to(dev))
                        flat = _flatten_inputs(acts, names, len(idx), dtype)
                        keys = {"input_index": idx}
                    module_info = _check_modules(flat, module_info, w_lo + b)
                    parts.append((torch.cat([t for t, _, _ in flat.values()], dim=1), keys))
                    bar.update(len(idx))
                rows, keys = _in_input_order(parts, max_length)
                writer.add(rows, **keys)
    finally:
        bar.close()
        model.train(was_training)
    if truncated:
        logger.warning("%d of %d texts were truncated to max_length=%d tokens", truncated, n_inputs, max_length)
    names_out = [f"{m['name']}:{i}" for m in module_info for i in range(m["num_units"])]
    manifest = {
        "kind": "text" if is_text else "tensor",
        "reduction": reduction if is_text else None,
        "num_inputs": n_inputs,
        "num_units": len(names_out),
        "dtype": str(dtype).replace("torch.", ""),
        "modules": module_info,
        "names": names_out,
        "inputs_file": writer.write_inputs_text(texts) if is_text else writer.write_inputs_tensor(x),
        "input_shape": list(input_shape) if input_shape is not None else None,
        "sample_keys": (["input_index", "token_position", "token_id", "char_start", "char_end"]
                        if is_text else ["input_index"]),
        "special_tokens": special_tokens,
        "max_length": max_length if is_text else None,
        "truncated_inputs": truncated,
        "keep_special_tokens": keep_special_tokens if is_text else None,
        "model": type(model).__name__,
        "metadata": metadata or {},
    }
    writer.close(manifest)
    logger.info("recorded %d samples x %d units into %s", writer._written, len(names_out), out)
    return ActivationStore.open(Path(out))


def _check_modules(flat: dict, module_info: list[dict] | None, batch: int) -> list[dict]:
    """Describe the modules from the first batch; later batches must give the same per-sample shapes."""
    if module_info is None:
        module_info, offset = [], 0
        for name, (t, shape, src_dtype) in flat.items():
            module_info.append({"name": name, "shape": list(shape), "dtype": str(src_dtype).replace("torch.", ""),
                                "offset": offset, "num_units": t.shape[1]})
            offset += t.shape[1]
        return module_info
    for info, (name, (_, shape, _)) in zip(module_info, flat.items()):
        if list(shape) != info["shape"]:
            raise ValueError(
                f"module {name!r} gave per-sample shape {tuple(shape)} in batch {batch} but "
                f"{tuple(info['shape'])} before; record modules with a fixed output size"
            )
    return module_info


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


def _flatten_tokens(acts, names, ids_shape, mask, reduction, dtype):
    """Per module: ([samples, units], per-sample shape, source dtype) from [B, T, ...] outputs."""
    bsz, seq = ids_shape
    out = {}
    for name in names:
        if name not in acts:
            raise ValueError(f"module {name!r} did not run in the forward pass; choose modules the model calls")
        t = acts[name]
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
    out = {}
    for name in names:
        if name not in acts:
            raise ValueError(f"module {name!r} did not run in the forward pass; choose modules the model calls")
        t = acts[name]
        if t.ndim < 1 or t.shape[0] != bsz:
            raise ValueError(
                f"module {name!r} output has shape {tuple(t.shape)}, expected a leading batch dimension of {bsz}"
            )
        out[name] = (t.reshape(bsz, -1).to("cpu", dtype), tuple(t.shape[1:]), t.dtype)
    return out


def _text_keys(idx, enc, extra, mask, reduction) -> dict[str, torch.Tensor]:
    """Per-sample int64 keys of one text batch (``idx``: the batch's input indices)."""
    bsz, seq = enc["input_ids"].shape
    if reduction == "mean":
        neg = torch.full((bsz,), -1, dtype=torch.long)
        return {"input_index": idx, "token_position": neg, "token_id": neg, "char_start": neg, "char_end": neg}
    index = idx.unsqueeze(1).expand(bsz, seq)
    pos = torch.arange(seq).unsqueeze(0).expand(bsz, seq)
    offsets = extra["offsets"]
    if offsets is None:
        cs = ce = torch.full((bsz, seq), -1, dtype=torch.long)
    else:
        cs, ce = offsets[..., 0].long(), offsets[..., 1].long()
    return {"input_index": index[mask], "token_position": pos[mask], "token_id": enc["input_ids"][mask].long(),
            "char_start": cs[mask], "char_end": ce[mask]}


def _in_input_order(parts: list, max_length: int):
    """Merge a window's batches (emptying ``parts``) with samples sorted by (input, token position).

    Each batch is scattered straight to its place, so the window is copied once.
    """
    keys = {k: torch.cat([kk[k] for _, kk in parts]) for k in parts[0][1]}
    order_key = keys["input_index"] * (max_length + 2)
    if "token_position" in keys:
        order_key = order_key + keys["token_position"]
    perm = torch.argsort(order_key, stable=True)
    n = perm.numel()
    dest = torch.empty_like(perm)
    dest[perm] = torch.arange(n)
    first = parts[0][0]
    rows = torch.empty(n, first.shape[1], dtype=first.dtype)
    start = 0
    while parts:
        part, _ = parts.pop(0)
        rows[dest[start : start + part.shape[0]]] = part
        start += part.shape[0]
    return rows, {k: v[perm] for k, v in keys.items()}
