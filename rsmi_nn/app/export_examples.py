"""Top and bottom examples of every coarse variable, with the variable's value on every token of the context.

:func:`level_examples` is what :func:`rsmi_nn.app.export.export_run` writes as ``examples/level_NNN.json``:

- ``variables [V][k]``: the ``k`` samples where the variable is largest, best first; ``bottom [V][k]``: where it
  is smallest, lowest first. Each item is the store's description of the sample
  (:meth:`graphs.ActivationStore.examples`: ``sample``, ``input_index``, ``text`` with the token marked
  ``[[...]]`` or the ``input`` tensor) plus ``value`` (the variable on that sample);
- for text recorded per token, each item also has ``context_tokens`` (the tokens around the sample's token,
  each with the text before it since the previous token, so ``"".join`` reads as the text),
  ``context_values`` (the variable on each of those tokens: the shading of a dashboard), ``context_focus``
  (the index of the sample's own token in that list) and ``context_start`` (the index of the first listed token
  among the recorded tokens of its input).
"""

from __future__ import annotations

import logging

import numpy as np
import torch

from rsmi_nn.app.files import to_jsonable

__all__ = ["TokenTable", "level_examples", "variable_histograms"]

log = logging.getLogger(__name__)


def _sig(x: float, digits: int = 4) -> float:
    return float(f"{x:.{digits}g}")


class TokenTable:
    """Every recorded token of a text store, in reading order per input.

    Attributes
    ----------
    order : int64 ``[N]``: sample rows sorted by (input, token position).
    rank : int64 ``[N]``: for sample ``i``, its index among the recorded tokens of its input.
    start, end : int64 ``[n_inputs]``: the input's first / past-last position in ``order``.
    tokens : list of ``N`` strings in ``order``'s order: the token with the text before it since the previous
        recorded token (``" they"``), or the special token's name (``"[CLS]"``).
    """

    def __init__(self, store):
        n = store.num_samples
        info = {k: v.numpy() for k, v in store.sample_info(torch.arange(n)).items()}
        inputs = store.inputs()
        specials = {int(k): v for k, v in store.manifest.get("special_tokens", {}).items()}
        inp, pos = info["input_index"], info["token_position"]
        self.order = np.lexsort((pos, inp))
        self.rank = np.empty(n, dtype=np.int64)
        n_inputs = max(len(inputs), int(inp.max()) + 1 if n else 0)
        counts = np.bincount(inp, minlength=n_inputs)
        self.end = np.cumsum(counts)
        self.start = self.end - counts
        self.rank[self.order] = np.arange(n) - self.start[inp[self.order]]
        cs, ce, tid = info["char_start"], info["char_end"], info["token_id"]
        self.tokens: list[str] = []
        prev_input, prev_end = -1, 0
        for i in self.order.tolist():
            j = int(inp[i])
            if j != prev_input:
                prev_input, prev_end = j, 0
            s, e = int(cs[i]), int(ce[i])
            if s < 0 or e <= s:  # a special token: no span in the text
                self.tokens.append(specials.get(int(tid[i]), f"<{int(tid[i])}>"))
                continue
            self.tokens.append(inputs[j][min(prev_end, s) : e])
            prev_end = e
        self.input_index = inp

    def window(self, sample: int, before: int, after: int) -> tuple[int, int, int]:
        """``(lo, hi, focus)``: ``order[lo:hi]`` are up to ``before``/``after`` tokens around ``sample`` in its
        input, ``order[lo + focus] == sample``."""
        j, r = int(self.input_index[sample]), int(self.rank[sample])
        s, e = int(self.start[j]), int(self.end[j])
        lo, hi = max(s, s + r - before), min(e, s + r + after + 1)
        return lo, hi, s + r - lo


def _describe(store, rows: torch.Tensor, values: torch.Tensor, table: TokenTable | None, h: torch.Tensor,
              before: int, after: int) -> list[list[dict]]:
    """``rows``/``values [k, V]`` → per variable, the store's description of each sample with its value."""
    unique = torch.unique(rows)
    described = {int(i): d for i, d in zip(unique.tolist(), store.examples(unique))}
    out = []
    for v in range(rows.shape[1]):
        items = []
        for r in range(rows.shape[0]):
            sample = int(rows[r, v])
            ex = dict(described[sample])
            ex["value"] = float(values[r, v])
            if table is not None:
                lo, hi, focus = table.window(sample, before, after)
                ex["context_tokens"] = table.tokens[lo:hi]
                ex["context_values"] = [_sig(x) for x in h[torch.from_numpy(table.order[lo:hi]), v].tolist()]
                ex["context_focus"] = focus
                ex["context_start"] = lo - int(table.start[table.input_index[sample]])
            items.append(ex)
        out.append(items)
    return out


def level_examples(level, store, k: int, *, before: int = 16, after: int = 7) -> dict | None:
    """Top-``k`` and bottom-``k`` samples of every coarse variable of ``level`` (see the module doc).

    Parameters
    ----------
    level : :class:`rsmi_nn.run.Level`.
    store : the run's :class:`graphs.ActivationStore` (its rows are the level's coarse samples).
    k : examples kept at each end.
    before, after : tokens of context kept on each side of a text sample's token.

    Returns
    -------
    dict with ``level``, ``kind``, ``k``, ``context`` (``before``/``after`` or ``None``), ``variables``,
    ``bottom``; ``None`` when the store's rows do not match the level's samples (with a warning).
    """
    h = level.coarse_samples().float()
    if h.shape[0] != store.num_samples:
        log.warning("level %d has %d coarse samples but the store has %d; skipping its examples",
                    level.index, h.shape[0], store.num_samples)
        return None
    k = min(k, h.shape[0])
    kind = store.kind if hasattr(store, "kind") else "tensor"
    keys = store.manifest.get("sample_keys", []) if hasattr(store, "manifest") else []
    table = TokenTable(store) if kind == "text" and "token_position" in keys else None
    top_v, top_r = torch.topk(h, k, dim=0)  # [k, V]
    low_v, low_r = torch.topk(-h, k, dim=0)
    return {"level": level.index, "kind": kind, "k": k,
            "context": {"before": before, "after": after} if table is not None else None,
            "variables": to_jsonable(_describe(store, top_r, top_v, table, h, before, after)),
            "bottom": to_jsonable(_describe(store, low_r, -low_v, table, h, before, after))}


def variable_histograms(h: torch.Tensor, bins: int = 24) -> list[dict]:
    """Per column of ``h [N, V]``: ``min``, ``max``, ``counts [bins]`` (equal bins over [min, max]), ``mean``,
    ``std`` and ``frac_nonzero`` (the fraction of samples where the variable is not exactly 0)."""
    h = h.double()
    lo, hi = h.min(0).values, h.max(0).values
    width = (hi - lo).clamp_min(1e-300)
    idx = ((h - lo) / width * bins).floor().long().clamp(0, bins - 1)
    counts = torch.zeros(h.shape[1], bins, dtype=torch.long)
    counts.scatter_add_(1, idx.T.contiguous(), torch.ones_like(idx.T))
    mean, std = h.mean(0), h.std(0) if h.shape[0] > 1 else torch.zeros(h.shape[1], dtype=h.dtype)
    nonzero = (h != 0).double().mean(0)
    return [{"min": float(lo[v]), "max": float(hi[v]), "counts": counts[v].tolist(), "mean": float(mean[v]),
             "std": float(std[v]), "frac_nonzero": float(nonzero[v])} for v in range(h.shape[1])]
