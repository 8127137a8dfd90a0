"""Capture the outputs of any ``torch.nn.Module``'s submodules through forward hooks chosen by name.

:func:`capture` is a context manager; inside it, the outputs of the matched modules are
kept in a dict (hooks exist only inside the ``with`` block and are removed in ``finally``)::

    with capture(model, "encoder.layer.*.intermediate") as acts:
        model(**batch)
    acts["encoder.layer.3.intermediate"]          # [batch, tokens, 1536]

:func:`graphs.record_activations` (:mod:`graphs.recording`) runs it over many inputs and
streams the outputs to disk.

Module names are those of ``model.named_modules()``; patterns use :mod:`fnmatch`
(``*`` also matches dots, so ``"hidden.*"`` matches ``hidden.0`` *and* ``hidden.0.1``).
"""

from __future__ import annotations

import difflib
import fnmatch
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

import torch
from torch import nn

__all__ = ["ModuleFilter", "capture", "first_tensor", "match_modules"]

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
