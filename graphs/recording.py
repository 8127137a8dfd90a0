"""Record a model's activations over many inputs into an on-disk :class:`~graphs.store.ActivationStore`.

:func:`record_activations` runs the model batch by batch inside :func:`graphs.hooks.capture`,
flattens each matched module's output to units ``"<module>:<i>"`` and streams the rows to a
:class:`~graphs.store_writer.StoreWriter` (shards + manifest). Memory holds one window of
inputs' activations, not the whole recording. Per-unit statistics (:class:`graphs.moments.StreamingMoments`)
are taken window by window and merged in a fixed tree over the windows (:class:`graphs.moments.MomentTree`).

Inside a process group (``torchrun``) the recording is data parallel: each rank runs a contiguous share of the
whole windows — the batches of one process, so the same samples to the bit — into its own shards of the one
store; rank 0 merges the statistics and writes the inputs and the manifest once.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn
from tqdm.auto import tqdm

from estimators.device import resolve_device
from estimators.validation import check_choice, check_positive_int
from graphs.distributed import agreed, all_gather_objects, is_active, is_writer, on_writer, rank, share
from graphs.hooks import ModuleFilter, capture, match_modules
from graphs.model_inputs import TensorInputs, TextInputs, model_inputs
from graphs.moments import MomentTree, StreamingMoments
from graphs.store import ActivationStore
from graphs.store_writer import StoreWriter

__all__ = ["record_activations"]

logger = logging.getLogger(__name__)


def record_activations(
    model: nn.Module,
    inputs,
    modules: ModuleFilter,
    out,
    batch_size: int = 64,
    *,
    tokenizer=None,
    attention_mask=None,
    reduction: str | None = None,
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
    inputs : a tensor of shape ``(n_inputs, ...)`` batched along dim 0 — one sample per input; token
        ids, an integer tensor ``(n_inputs, seq)`` run as ``model(ids)`` (``model(ids, attention_mask=m)``
        with a mask) — one sample per real token when every recorded output is ``(batch, seq, ...)``,
        else per input; or a list of strings for a Hugging Face model with ``tokenizer`` — one sample
        per real (non-padding, by the attention mask) token, or per text with ``reduction="mean"``.
    modules : fnmatch pattern(s) or predicate selecting modules (e.g. ``"encoder.layer.*.intermediate"``).
        For text, every matched output must be ``(batch, tokens, ...)``.
    out : folder for the store; must be empty or new unless ``overwrite=True``.
    batch_size : inputs per forward pass.
    tokenizer : a Hugging Face tokenizer (text inputs only); a fast one also gives the token spans.
    attention_mask : token-id inputs only: 0/1 or bool ``(n_inputs, seq)``, 1 = a real token (default: all).
    reduction : ``"token"`` (one sample per token) or ``"mean"`` (average over each input's real tokens);
        ``None``: per token where the inputs have tokens, else per input. A reduction the inputs cannot
        take (a tensor without a token dimension) is an error.
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
    recording leaves a folder that :meth:`ActivationStore.open` refuses. Inside an initialised process group
    every rank must call it with the same arguments (each records its share of the windows; see the module).
    """
    batch_size = check_positive_int(batch_size, name="batch_size")
    max_length = check_positive_int(max_length, name="max_length")
    if shard_size is not None:
        shard_size = check_positive_int(shard_size, name="shard_size")
    if reduction is not None:
        check_choice(reduction, ("token", "mean"), name="reduction")
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    names = match_modules(model, modules)
    dev = resolve_device(device)
    batches = model_inputs(inputs, tokenizer, batch_size=batch_size, sort_window=sort_window, reduction=reduction,
                           max_length=max_length, keep_special_tokens=keep_special_tokens,
                           attention_mask=attention_mask)
    windows = range(0, batches.num_inputs, batches.window)
    mine = [windows[i] for i in share(len(windows))]  # this rank's whole windows (all of them in one process)
    writer = _writer(out, shard_size, overwrite)
    with agreed("recording the activations"):
        module_info, tree = _run_model(model, batches, mine, names, writer, batch_size=batch_size, device=dev,
                                       dtype=dtype, progress=progress)
        shards = writer.finish()
    parts = all_gather_objects((module_info, tree.nodes, shards, batches.truncated, batches.special_tokens))
    manifest = on_writer("writing the store's manifest", _close, parts, batches, writer, dtype=dtype,
                         input_shape=input_shape, model=model, metadata=metadata)
    if manifest["truncated_inputs"]:
        logger.warning("%d of %d texts were truncated to max_length=%d tokens", manifest["truncated_inputs"],
                       batches.num_inputs, max_length)
    logger.info("recorded %d samples x %d units into %s", manifest["num_samples"], manifest["num_units"], out)
    return ActivationStore.open(Path(out))


def _writer(out, shard_size: int | None, overwrite: bool) -> StoreWriter:
    """The store writer of this process; under ``torchrun`` rank 0 prepares the folder and each rank writes a part."""
    if not is_active():
        return StoreWriter(out, shard_size=shard_size, overwrite=overwrite)
    on_writer("preparing the store folder", StoreWriter.prepare, out, overwrite)
    return StoreWriter(out, shard_size=shard_size, part=rank())


def _close(parts: list[tuple], batches, writer: StoreWriter, **fields) -> dict:
    """Rank 0 (or the only process): the per-unit statistics, the inputs and the manifest over every part."""
    infos = [p[0] for p in parts if p[0] is not None]
    if not infos:
        raise ValueError("no input was recorded; pass at least one input")
    for info in infos[1:]:
        if [m["shape"] for m in info] != [m["shape"] for m in infos[0]]:
            raise ValueError("ranks recorded different per-sample module shapes; record modules with a fixed output size")
    batches.truncated = sum(p[3] for p in parts)
    for p in parts:
        batches.special_tokens.update({k: v for k, v in p[4].items() if k not in batches.special_tokens})
    manifest = _manifest(batches, infos[0], writer, **fields)
    manifest["unit_stats"] = writer.write_unit_stats(MomentTree.total([n for p in parts for n in p[1]]))
    return writer.write_manifest(manifest, [s for p in parts for s in p[2]])


def _run_model(model: nn.Module, batches: TensorInputs | TextInputs, windows: list[int], names: list[str],
               writer: StoreWriter, *, batch_size: int, device, dtype: torch.dtype, progress: bool):
    """Run ``model`` over the windows starting at ``windows``, in eval mode under ``inference_mode`` with hooks on
    ``names``; returns (the modules' info or None without a window, the windows' :class:`MomentTree`).

    The model's training flag is restored and the hooks removed afterwards, also on an error.
    """
    was_training = model.training
    model.to(device).eval()
    total = sum(min(batches.num_inputs, lo + batches.window) - lo for lo in windows)
    bar = tqdm(total=total, desc="recording", disable=not progress or not is_writer(), unit="input")
    try:
        with torch.inference_mode(), capture(model, names) as acts:
            return _record_windows(model, batches, windows, names, acts, writer, batch_size, device, dtype, bar)
    finally:
        bar.close()
        model.train(was_training)


def _record_windows(model, batches: TensorInputs | TextInputs, windows: list[int], names: list[str], acts: dict,
                    writer: StoreWriter, batch_size: int, device, dtype: torch.dtype, bar):
    """Run the given windows batch by batch and write their samples in input order; returns (modules, moments)."""
    module_info: list[dict] | None = None
    tree = MomentTree()
    for w_lo in windows:
        order = batches.order(w_lo, min(batches.num_inputs, w_lo + batches.window))
        parts = []
        for b in range(0, len(order), batch_size):
            idx = torch.tensor(order[b : b + batch_size], dtype=torch.long)
            acts.clear()
            flat, keys = batches.run(model, idx, acts, names, device, dtype)
            module_info = _check_modules(flat, module_info, w_lo + b)
            parts.append((torch.cat([t for t, _, _ in flat.values()], dim=1), keys))
            bar.update(len(idx))
        rows, keys = _in_input_order(parts)
        tree.add(w_lo // batches.window, StreamingMoments(rows.shape[1], gram=False).update(rows))
        writer.add(rows, **keys)
    return module_info, tree


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


def _in_input_order(parts: list):
    """Merge a window's batches (emptying ``parts``) with samples sorted by (input, token position).

    Each batch is scattered straight to its place, so the window is copied once.
    """
    keys = {k: torch.cat([kk[k] for _, kk in parts]) for k in parts[0][1]}
    order_key = keys["input_index"]
    if "token_position" in keys:  # positions lie in -1..top: a stride of top + 2 keeps the inputs apart
        position = keys["token_position"]
        top = int(position.max()) if position.numel() else 0
        order_key = order_key * (top + 2) + position
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


def _manifest(batches: TensorInputs | TextInputs, module_info: list[dict], writer: StoreWriter, *,
              dtype: torch.dtype, input_shape, model: nn.Module, metadata: dict | None) -> dict:
    """The manifest fields that describe the recording (the writer adds shards and counts)."""
    names = [f"{m['name']}:{i}" for m in module_info for i in range(m["num_units"])]
    return {
        "kind": batches.kind,
        "reduction": batches.reduction,
        "num_inputs": batches.num_inputs,
        "num_units": len(names),
        "dtype": str(dtype).replace("torch.", ""),
        "modules": module_info,
        "names": names,
        "inputs_file": batches.write_inputs(writer),
        "input_shape": list(input_shape) if input_shape is not None else None,
        "sample_keys": list(batches.sample_keys),
        "special_tokens": batches.special_tokens,
        "max_length": batches.max_length,
        "truncated_inputs": batches.truncated,
        "keep_special_tokens": batches.keep_special_tokens,
        "model": type(model).__name__,
        "metadata": metadata or {},
    }
