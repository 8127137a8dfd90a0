"""What "the output" of each kind of model is, how it changes, and the summary metrics.

Three kinds, each an :class:`OutputKind`:

``classifier`` (class logits ``[B, C]``; digits-mlp, any tensor model with logits)
    items: log-probabilities per input. change: KL(clean ‖ spliced) per input, nats.
    metrics: ``kl`` (mean, nats), ``agreement`` (arg-max equal to the clean one), ``accuracy`` (labels known).
``encoder`` (a Hugging Face text encoder; MiniLM)
    items: the pooled sentence embedding, the mean of ``last_hidden_state`` over real tokens (the
    sentence-transformers pooling of all-MiniLM-L6-v2). change: 1 − cosine with the clean embedding.
    metrics: ``cosine`` (mean), ``spearman`` (Spearman correlation between the upper triangles of the
    clean and spliced pairwise cosine-similarity matrices of the held-out texts).
``causal-lm`` (next-token logits ``[B, T, V]``; tiny-lm)
    items: log-probabilities at every real position that has a real next token. change: KL(clean ‖
    spliced) per position, nats. metrics: ``ce`` (next-token cross-entropy, nats/token), ``delta_ce``
    (ce − clean ce), ``kl`` (mean per position).

:func:`normalised` maps each metric onto clean = 1, mean ablation = 0 (SAELens' "loss recovered").
"""

from __future__ import annotations

import math

import torch

from rsmi_nn.app.evaluation.errors import NotEvaluable

__all__ = ["KINDS", "OutputKind", "normalised", "output_kind"]


def _first_tensor(output):
    from graphs.hooks import first_tensor

    t = getattr(output, "logits", None)
    return t if isinstance(t, torch.Tensor) else first_tensor(output)


def _kl(clean: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
    """KL(p ‖ q) per row from log-probabilities ``[n, C]``, nats."""
    return (clean.exp() * (clean - other)).sum(-1).clamp_min(0)


class OutputKind:
    """Base: ``forward(model, batch)`` → items; ``item_input(batch)`` → input of each item (local);
    ``change(clean, other)`` → per-item output change (differentiable); ``summary`` → metric dict."""

    name = ""
    metric = ""

    def forward(self, model, batch) -> torch.Tensor:
        raise NotImplementedError

    def item_input(self, batch) -> torch.Tensor:
        return torch.arange(batch.size)

    def change(self, clean: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def summary(self, clean: list[torch.Tensor], other: list[torch.Tensor], batches) -> dict:
        raise NotImplementedError

    def input_change(self, clean: torch.Tensor, other: torch.Tensor, batch) -> torch.Tensor:
        """``[batch.size]``: the mean change over each input's items."""
        per_item = self.change(clean, other)
        idx = self.item_input(batch).to(per_item.device)
        total = torch.zeros(batch.size, dtype=per_item.dtype, device=per_item.device).index_add(0, idx, per_item)
        count = torch.zeros(batch.size, dtype=per_item.dtype, device=per_item.device).index_add(
            0, idx, torch.ones_like(per_item))
        return total / count.clamp_min(1)


class Classifier(OutputKind):
    name, metric = "classifier", "kl"

    def forward(self, model, batch):
        logits = _first_tensor(model(batch.inputs))
        if logits is None or logits.ndim != 2:
            shape = None if logits is None else tuple(logits.shape)
            raise NotEvaluable(f"a classifier must return logits [batch, classes], got {shape}")
        return torch.log_softmax(logits.float(), -1)

    def change(self, clean, other):
        return _kl(clean, other)

    def summary(self, clean, other, batches):
        c, o = torch.cat(clean), torch.cat(other)
        out = {"kl": float(_kl(c, o).mean()), "agreement": float((c.argmax(1) == o.argmax(1)).double().mean())}
        labels = [b.labels for b in batches]
        if all(lab is not None for lab in labels):
            out["accuracy"] = float((o.argmax(1) == torch.cat(labels).to(o.device)).double().mean())
        return out


class Encoder(OutputKind):
    name, metric = "encoder", "cosine"

    def forward(self, model, batch):
        h = _first_tensor(model(**batch.inputs))
        m = batch.inputs["attention_mask"].to(h.device).unsqueeze(-1).to(h.dtype)
        return ((h * m).sum(1) / m.sum(1).clamp_min(1)).float()

    def change(self, clean, other):
        return 1 - torch.nn.functional.cosine_similarity(clean, other, dim=-1)

    def summary(self, clean, other, batches):
        from scipy.stats import spearmanr

        c, o = torch.cat(clean), torch.cat(other)
        out = {"cosine": float(torch.nn.functional.cosine_similarity(c, o, dim=-1).mean())}
        if c.shape[0] >= 3:
            def sims(e):
                e = torch.nn.functional.normalize(e.double(), dim=-1)
                s = e @ e.T
                i, j = torch.triu_indices(len(e), len(e), 1)
                return s[i, j].cpu().numpy()
            rho = spearmanr(sims(c), sims(o)).statistic
            out["spearman"] = float(rho) if math.isfinite(rho) else float("nan")
        return out


class CausalLM(OutputKind):
    name, metric = "causal-lm", "ce"

    @staticmethod
    def _positions(batch) -> torch.Tensor:
        m = batch.inputs["attention_mask"].bool()
        return m[:, :-1] & m[:, 1:]

    def forward(self, model, batch):
        logits = _first_tensor(model(**batch.inputs))
        if logits is None or logits.ndim != 3:
            raise NotEvaluable("a causal LM must return next-token logits [batch, tokens, vocabulary]")
        pos = self._positions(batch).to(logits.device)
        return torch.log_softmax(logits[:, :-1][pos].float(), -1)

    def item_input(self, batch):
        pos = self._positions(batch)
        return torch.arange(pos.shape[0])[:, None].expand_as(pos)[pos]

    def change(self, clean, other):
        return _kl(clean, other)

    def summary(self, clean, other, batches):
        c, o = torch.cat(clean), torch.cat(other)
        targets = torch.cat([b.inputs["input_ids"][:, 1:][self._positions(b)] for b in batches]).to(o.device)
        ce = -o.gather(1, targets[:, None]).mean()
        ce_clean = -c.gather(1, targets[:, None]).mean()
        return {"ce": float(ce), "delta_ce": float(ce - ce_clean), "kl": float(_kl(c, o).mean())}


KINDS = {k.name: k for k in (Classifier, Encoder, CausalLM)}


def output_kind(name: str) -> OutputKind:
    """The :class:`OutputKind` named ``name`` (``classifier``, ``encoder``, ``causal-lm``)."""
    if name not in KINDS:
        raise ValueError(f"unknown model kind {name!r}; choose one of {', '.join(KINDS)}")
    return KINDS[name]()


def normalised(values: dict, clean: dict, ablated: dict) -> dict:
    """Each metric on the scale clean model = 1, mean ablation of the recorded modules = 0.

    ``(v - v_ablated) / (v_clean - v_ablated)``; NaN where clean and ablation agree.
    """
    out = {}
    for key, v in values.items():
        c, a = clean.get(key), ablated.get(key)
        if c is None or a is None or not math.isfinite(c - a) or abs(c - a) < 1e-12:
            out[key] = float("nan")
        else:
            out[key] = (v - a) / (c - a)
    return out
