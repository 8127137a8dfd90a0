"""A model on its held-out inputs, run clean or with the recorded modules' outputs replaced.

:class:`SplicedModel` holds the model, its held-out batches and how the run's level-0 units map onto
the recorded modules' outputs. Activation *rows* are what the flow calls samples: one per input for a
tensor model, one per real token (attention mask) for a text model, in batch order. ``outputs(x)``
runs every batch with the recorded modules' outputs replaced by the rows ``x [n_rows, U0]`` (in the
run's unit order); ``x=None`` runs the clean model. A replaced module is not run: its ``forward`` is
swapped, inside the call only, for one that returns the spliced output (:func:`substituted_outputs`;
padding tokens, which no real token reads, get zeros). Units the run's graph left out (constant on the
flow's samples) are set to their mean on the flow's samples whenever a module is replaced.

Inside a ``torch.distributed`` process group :meth:`SplicedModel.record` and :meth:`SplicedModel.outputs` are
sharded by held-out batches: each rank runs a contiguous share of the one-process batches (so the same bits)
and every rank gets every batch's result; every rank must call them in the same order.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn

from graphs.distributed import all_gather_objects, share
from rsmi_nn.app.evaluation.errors import NotEvaluable

__all__ = ["Batch", "ModuleLayout", "SplicedModel", "replaced_outputs", "substituted_outputs"]


@dataclass
class Batch:
    """One forward pass: ``inputs`` (a tensor, or tokenizer output as a dict), ``mask`` ``[B, T]`` of the
    tokens that are rows (``None`` for tensor inputs), and the rows ``[start, stop)`` it covers."""

    inputs: object
    mask: torch.Tensor | None
    start: int
    stop: int
    size: int  # number of inputs
    labels: torch.Tensor | None = None  # class labels of the inputs, when known


@dataclass
class ModuleLayout:
    """Where one recorded module's units sit: ``columns`` (run columns) feed ``units`` (indices in the
    module's flattened output of ``width`` units); ``fill [width]`` is the value of units not in the run."""

    name: str
    width: int
    columns: torch.Tensor
    units: torch.Tensor
    fill: torch.Tensor
    shape: tuple | None = None  # the output's shape after its batch (and token) dimensions, once seen
    dtype: torch.dtype | None = None

    def __post_init__(self):
        n = self.columns.numel()
        self._whole = n == self.width and bool((self.units == torch.arange(n)).all())  # every unit, in order
        first = int(self.columns[0]) if n else 0
        self._span = slice(first, first + n) if n and bool((self.columns == torch.arange(first, first + n)).all()) \
            else None

    def full_rows(self, rows: torch.Tensor) -> torch.Tensor:
        """``[n, width]``: the module's flattened output for run rows ``rows [n, U0]`` (``fill`` where no column)."""
        if self._whole:
            return rows[:, self._span] if self._span is not None else rows[:, self.columns.to(rows.device)]
        full = self.fill.to(rows).expand(rows.shape[0], self.width)
        return full.index_copy(1, self.units.to(rows.device), rows[:, self.columns.to(rows.device)])


@contextmanager
def replaced_outputs(model: nn.Module, replace: dict[str, Callable[[torch.Tensor], torch.Tensor]]) -> Iterator[None]:
    """Inside the block, module ``name``'s output ``t`` is replaced by ``replace[name](t)``.

    Forward hooks, removed in ``finally``. A module whose output is not a tensor raises ValueError.
    """
    lookup = dict(model.named_modules())
    handles = []

    def make(name: str, fn):
        def hook(_module, _inputs, output):
            if not isinstance(output, torch.Tensor):
                raise NotEvaluable(f"module {name!r} returns {type(output).__name__}, not a tensor; it cannot be spliced")
            return fn(output)

        return hook

    try:
        for name, fn in replace.items():
            if name not in lookup:
                raise ValueError(f"module {name!r} is not in {type(model).__name__}; the run recorded another model")
            handles.append(lookup[name].register_forward_hook(make(name, fn)))
        yield
    finally:
        for h in handles:
            h.remove()


@contextmanager
def substituted_outputs(model: nn.Module, outputs: dict[str, Callable[[], torch.Tensor]]) -> Iterator[None]:
    """Inside the block, module ``name`` is not run: calling it returns ``outputs[name]()``.

    The module's ``forward`` is shadowed by an instance attribute, restored in ``finally`` (an instance
    ``forward`` that was there, e.g. a dispatch wrapper, comes back).
    """
    lookup = dict(model.named_modules())
    saved: list[tuple[nn.Module, object]] = []
    try:
        for name, make in outputs.items():
            if name not in lookup:
                raise ValueError(f"module {name!r} is not in {type(model).__name__}; the run recorded another model")
            module = lookup[name]
            saved.append((module, module.__dict__.get("forward")))
            module.forward = lambda *_args, make=make, **_kwargs: make()
        yield
    finally:
        for module, before in reversed(saved):
            del module.forward
            if before is not None:
                module.forward = before


def _rows_to_output(full: torch.Tensor, batch: Batch, m: ModuleLayout) -> torch.Tensor:
    """The module's output for ``batch`` from its rows ``full [n_rows, width]`` (zeros at padding tokens)."""
    full = full.to(dtype=m.dtype)
    if batch.mask is None:
        return full.reshape(batch.size, *m.shape)
    b, t = batch.mask.shape
    if full.shape[0] == b * t:  # no padding
        return full.reshape(b, t, *m.shape)
    where = batch.mask.reshape(-1).nonzero().flatten().to(full.device)
    return full.new_zeros(b * t, full.shape[1]).index_copy(0, where, full).reshape(b, t, *m.shape)


def _get_rows(t: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    if mask is None:
        return t.reshape(t.shape[0], -1)
    return t.reshape(mask.shape[0], mask.shape[1], -1)[mask.to(t.device)]


class SplicedModel:
    """The model, its held-out batches and the unit layout; see the module docstring.

    Parameters
    ----------
    model : the network (eval mode), on ``device``.
    forward : ``forward(model, batch) -> Tensor``: the output the metrics read (class logits ``[B, C]``, a
        pooled embedding ``[B, d]``, next-token logits ``[B, T, V]``).
    batches : the held-out batches, rows in order.
    layout : one :class:`ModuleLayout` per recorded module, in model order.
    """

    def __init__(self, model: nn.Module, forward, batches: list[Batch], layout: list[ModuleLayout], device):
        self.model, self.forward, self.batches, self.layout, self.device = model, forward, batches, layout, device
        self.num_rows = batches[-1].stop if batches else 0
        self.num_units = sum(len(m.columns) for m in layout)

    @property
    def modules(self) -> list[str]:
        return [m.name for m in self.layout]

    def record(self, *, outputs: bool = False):
        """The clean activations ``[n_rows, U0]`` of the run's units on the held-out inputs (float32, CPU);
        with ``outputs=True``, also the clean outputs of every batch (as :meth:`outputs`), from the same pass.
        Inside a process group each rank runs its share of the batches and every rank gets the whole result."""
        out = torch.empty(self.num_rows, self.num_units)
        parts = _gathered([self._record_batch(self.batches[i]) for i in share(len(self.batches))])
        for batch, (rows_by_module, shapes, _clean) in zip(self.batches, parts, strict=True):
            for m, rows in zip(self.layout, rows_by_module):
                out[batch.start:batch.stop, m.columns] = rows
                m.shape, m.dtype = shapes[m.name]
        return (out, [c for _, _, c in parts]) if outputs else out

    def _record_batch(self, batch: Batch):
        """One batch's clean pass: (each module's rows of the run's units, each module's output shape and dtype,
        the clean output)."""
        seen: dict[str, torch.Tensor] = {}

        def keep(name, mask=batch.mask):
            def fn(t):
                seen[name] = _get_rows(t.detach(), mask).float().cpu()
                seen[name, "shape"] = (tuple(t.shape[1 if mask is None else 2:]), t.dtype)
                return t
            return fn

        with torch.no_grad(), replaced_outputs(self.model, {m.name: keep(m.name) for m in self.layout}):
            clean = self.forward(self.model, batch).detach()
        rows = []
        for m in self.layout:
            if seen[m.name].shape != (batch.stop - batch.start, m.width):
                raise ValueError(f"module {m.name!r} gave rows of shape {tuple(seen[m.name].shape)}, expected "
                                 f"{(batch.stop - batch.start, m.width)}; the run recorded another model or input")
            rows.append(seen[m.name][:, m.units])
        return rows, {m.name: seen[m.name, "shape"] for m in self.layout}, clean

    def _learn_shapes(self) -> None:
        """The recorded modules' output shapes and dtypes, from a clean pass on the first input (once)."""
        if self.batches and any(m.shape is None for m in self.layout):
            self.head(1).record()

    def _replacements(self, rows: torch.Tensor, batch: Batch, modules) -> dict:
        self._learn_shapes()
        return {m.name: (lambda m=m: _rows_to_output(m.full_rows(rows), batch, m)) for m in self.layout
                if modules is None or m.name in modules}

    def run_batch(self, batch: Batch, rows: torch.Tensor | None = None, modules=None) -> torch.Tensor:
        """The output on one batch with its rows ``[batch.stop - batch.start, U0]`` spliced into ``modules``
        (``None``: every recorded module), or clean (``rows=None``); differentiable in ``rows``."""
        if rows is None:
            return self.forward(self.model, batch)
        with substituted_outputs(self.model, self._replacements(rows.to(self.device), batch, modules)):
            return self.forward(self.model, batch)

    def outputs(self, x: torch.Tensor | None = None, modules=None) -> list[torch.Tensor]:
        """The outputs of every batch (no gradient), clean (``x=None``) or with the rows ``x [n_rows, U0]``
        spliced in."""
        with torch.no_grad():
            return _gathered([self.run_batch(b, None if x is None else x[b.start:b.stop], modules).detach()
                              for b in (self.batches[i] for i in share(len(self.batches)))])

    def head(self, n_inputs: int) -> SplicedModel:
        """The same model on its first ``n_inputs`` held-out inputs (rows ``[0, head.num_rows)``)."""
        batches, left = [], n_inputs
        for b in self.batches:
            if left <= 0:
                break
            k = min(left, b.size)
            left -= k
            if k == b.size:
                batches.append(b)
                continue
            if b.mask is None:
                inputs, mask, n = b.inputs[:k], None, k
            else:  # trailing columns that are padding for all k inputs are cut (the batch was padded for more)
                width = int(b.mask[:k].any(0).nonzero().max()) + 1
                inputs = {key: v[:k, :width] if v.ndim > 1 else v[:k] for key, v in b.inputs.items()}
                mask, n = b.mask[:k, :width], int(b.mask[:k].sum())
            batches.append(Batch(inputs, mask, b.start, b.start + n, k, None if b.labels is None else b.labels[:k]))
        return SplicedModel(self.model, self.forward, batches, self.layout, self.device)


def repeat_batch(batch: Batch, times: int) -> Batch:
    """``batch`` with its inputs stacked ``times`` times (copy-major; rows likewise), for running several
    splices of the same inputs in one forward pass."""
    if batch.mask is None:
        inputs = batch.inputs.repeat(times, *([1] * (batch.inputs.ndim - 1)))
    else:
        inputs = {k: v.repeat(times, *([1] * (v.ndim - 1))) for k, v in batch.inputs.items()}
    rows = batch.stop - batch.start
    return Batch(inputs, None if batch.mask is None else batch.mask.repeat(times, 1), 0, rows * times,
                 batch.size * times, None if batch.labels is None else batch.labels.repeat(times))


def _gathered(mine: list) -> list:
    """Every rank's per-batch results in batch order (the ranks hold contiguous shares, rank 0 first); one
    process: ``mine``."""
    return [item for part in all_gather_objects(mine) for item in part]
