"""The held-out inputs of a run: the source's inputs that its flow did not record.

``rsmi run`` records the first ``source.max_samples`` inputs of a model source (all of them when it is
unset); the held-out inputs are the next ones, ``[n_recorded, n_recorded + n)``, in the source's own
order. For ``digits-mlp`` (its config records 1 437 digits) they are scikit-learn's digits 1 437–1 796;
for ``minilm`` and ``tiny-lm``, the corpus sentences after the recorded ones. A run that recorded all
of its source's inputs has none, and evaluating it is an error naming the fix.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from rsmi_nn.app.evaluation.errors import NoHeldOutInputs, NotEvaluable
from rsmi_nn.app.evaluation.metrics import output_kind
from rsmi_nn.app.evaluation.model import Batch, ModuleLayout, SplicedModel

__all__ = ["NoHeldOutInputs", "NotEvaluable", "held_out_model", "model_kind"]

log = logging.getLogger(__name__)

_TEXT_SOURCES = ("minilm", "tiny-lm")  # built-in text sources whose input count is the option max_texts
#: a text batch's token slots (texts x longest) stay within this factor of its real tokens
MAX_PADDING = 1.25


def model_kind(source) -> str:
    """``causal-lm`` / ``encoder`` / ``classifier``: the source's ``info["task"]`` when it says, else text
    sources are encoders and tensor sources classifiers."""
    task = (source.info or {}).get("task")
    if task is not None:
        return task
    return "encoder" if source.kind == "text" else "classifier"


def _load(config, n_recorded: int, n: int):
    from rsmi_nn.app.sources import load_source

    name = config.source.name
    if name.startswith(("samples:", "store:")):
        raise ValueError(f"the run's source is {name!r}, not a model; evaluation splices into a model, so it needs "
                         "a run of `rsmi run` on a model source (digits-mlp, minilm, tiny-lm, python:...)")
    options = dict(config.source.options)
    if name in _TEXT_SOURCES or name.startswith("hf:"):
        options["max_texts"] = n_recorded + n
    return load_source(name, **options)


def _layout(run, manifest: dict, store) -> list[ModuleLayout]:
    """The recorded modules and where the run's units sit in their outputs."""
    columns: dict[str, list[tuple[int, int]]] = {}
    for col, unit in enumerate(run.unit_names):
        module, _, index = unit.rpartition(":")
        columns.setdefault(module, []).append((col, int(index)))
    layout = []
    for info in manifest["modules"]:
        name, width = info["name"], int(info["num_units"])
        pairs = columns.get(name, [])
        cols = torch.tensor([c for c, _ in pairs], dtype=torch.long)
        units = torch.tensor([u for _, u in pairs], dtype=torch.long)
        fill = torch.zeros(width)
        missing = sorted(set(range(width)) - set(units.tolist()))
        if missing:  # units the graph left out (constant on the flow's samples): their recorded mean
            fill[missing] = store.to_tensor(units=[f"{name}:{i}" for i in missing]).mean(0)
        layout.append(ModuleLayout(name, width, cols, units, fill))
    if sum(len(m.columns) for m in layout) != run.num_units:
        raise ValueError("the run's level-0 units are not all units of the recorded modules; evaluate a run of "
                         "`rsmi run` whose activations/ folder is intact")
    return layout


def _text_batches(source, indices: list[int], *, max_length: int, batch_tokens: int,
                  max_padding: float = MAX_PADDING) -> list[Batch]:
    """Texts sorted by length (rows follow this order), cut into batches of at most ``batch_tokens`` token
    slots whose slots are at most ``max_padding`` times their real tokens (a text alone always fits)."""
    texts = [source.inputs[i] for i in indices]
    lengths = [len(ids) for ids in source.tokenizer(texts, truncation=True, max_length=max_length)["input_ids"]]
    order = sorted(range(len(texts)), key=lambda i: (lengths[i], i))
    batches, row, start = [], 0, 0
    while start < len(order):
        stop, real = start + 1, lengths[order[start]]
        while stop < len(order):
            slots, real_next = (stop + 1 - start) * lengths[order[stop]], real + lengths[order[stop]]
            if slots > batch_tokens or slots > max_padding * real_next:
                break
            stop, real = stop + 1, real_next
        chunk = [texts[i] for i in order[start:stop]]
        enc = dict(source.tokenizer(chunk, padding=True, truncation=True, max_length=max_length, return_tensors="pt"))
        if "token_type_ids" in enc and "token_type_ids" not in _forward_names(source.model):
            enc.pop("token_type_ids")
        mask = enc["attention_mask"].bool()
        n = int(mask.sum())
        batches.append(Batch(enc, mask, row, row + n, len(chunk)))
        row, start = row + n, stop
    return batches, [indices[i] for i in order]


def _forward_names(model) -> set[str]:
    import inspect

    return set(inspect.signature(model.forward).parameters)


def held_out_model(run, run_dir: Path, config, n: int, *, device="cpu", batch_tokens: int = 4096):
    """The run's model on ``n`` held-out inputs; returns ``(SplicedModel, OutputKind, store, info dict)``
    (``store``: the run's activation store; ``info["inputs"]``: the held-out input indices in row order).

    Raises ValueError when the run has no model source or too few inputs are left out of the flow.
    """
    from graphs import ActivationStore

    store = ActivationStore.open(Path(run_dir) / "activations")
    manifest = store.manifest
    n_recorded = int(manifest["num_inputs"])
    source = _load(config, n_recorded, n)
    total = len(source.inputs)
    if total <= n_recorded:
        raise NoHeldOutInputs(f"the run recorded all {total} inputs of source {config.source.name!r}, so none is held out; "
                         f"re-run with --max-samples below {total} (e.g. {int(total * 0.8)})")
    indices = list(range(n_recorded, min(total, n_recorded + n)))
    if len(indices) < n:
        log.warning("only %d held-out inputs are left (asked for %d)", len(indices), n)
    kind = output_kind(model_kind(source))
    model = source.model.to(device).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    if source.kind == "text":
        max_length = int(manifest.get("max_length") or 128)
        batches, indices = _text_batches(source, indices, max_length=max_length, batch_tokens=batch_tokens)
        for b in batches:
            b.inputs = {k: v.to(device) for k, v in b.inputs.items()}
    else:
        x = source.inputs[indices]
        labels = None if source.targets is None else source.targets[indices]
        step = 512
        batches = [Batch(x[i:i + step].to(device), None, i, min(i + step, len(indices)), len(x[i:i + step]),
                         None if labels is None else labels[i:i + step]) for i in range(0, len(indices), step)]
    spliced = SplicedModel(model, kind.forward, batches, _layout(run, manifest, store), device)
    info = {"inputs": indices, "num_inputs": len(indices), "num_rows": spliced.num_rows,
            "chosen": f"source inputs {indices and min(indices)}..{indices and max(indices)} "
                      f"(the flow recorded inputs 0..{n_recorded - 1})",
            "source": config.source.name, "model_kind": kind.name}
    return spliced, kind, store, info
