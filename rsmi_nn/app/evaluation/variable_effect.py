"""Per-variable output effect: mean-ablate one coarse variable at a time, through its decoder.

For variable ``j`` of a level, every held-out row becomes ``x + (c̄_j − c_j) · d_j`` — the clean
activations moved by the decoder's direction ``d_j`` (:meth:`LinearDecoder.directions`) times the
change of the variable to its mean on the flow's samples ``c̄_j`` — and all recorded modules are
spliced with it at once. The effect is the mean output change over the inputs (KL in nats for
classifiers and LMs, 1 − cosine for encoders). Several variables run in one forward pass, their
inputs stacked.
"""

from __future__ import annotations

import torch

from rsmi_nn.app.evaluation.model import repeat_batch

__all__ = ["variable_effects"]


def variable_effects(spliced, kind, x: torch.Tensor, clean: list[torch.Tensor], codes: torch.Tensor, decoder, *,
                     max_rows: int = 8192) -> torch.Tensor:
    """``[J]`` float64: the output change when each variable alone is set to its mean.

    ``x [n_rows, U0]`` clean rows and ``codes [n_rows, J]`` the level's variables on them; ``clean`` the clean
    outputs per batch of ``spliced``; ``max_rows`` bounds the rows of one stacked forward pass.
    """
    directions = decoder.directions().to(x)           # [J, U0]
    shift = decoder.code_mean.to(x) - codes.to(x)      # [n_rows, J]
    num = codes.shape[1]
    total = torch.zeros(num, dtype=torch.float64)
    n_inputs = 0
    with torch.no_grad():
        for batch, clean_items in zip(spliced.batches, clean, strict=True):
            rows = x[batch.start:batch.stop]
            s = shift[batch.start:batch.stop]
            per = max(1, max_rows // max(rows.shape[0], 1))
            for lo in range(0, num, per):
                js = torch.arange(lo, min(num, lo + per))
                moved = rows[None] + s[:, js].T[:, :, None] * directions[js][:, None, :]   # [k, rows, U0]
                big = repeat_batch(batch, len(js))
                ref = clean_items.repeat(len(js), *([1] * (clean_items.ndim - 1)))
                out = spliced.run_batch(big, moved.reshape(-1, rows.shape[1]))
                change = kind.input_change(ref, out, big).view(len(js), batch.size)
                total[js] += change.double().sum(1).cpu()
            n_inputs += batch.size
    return total / max(n_inputs, 1)
