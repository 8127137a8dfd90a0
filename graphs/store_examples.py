"""Describe recorded samples for a report: the input they came from, a text's token marked ``[[...]]``.

:meth:`graphs.store.ActivationStore.examples` calls :func:`describe_samples`; a report shows
the inputs that activate a unit most as ``"… the [[cat]] sat"`` or as the input image.
"""

from __future__ import annotations

import torch

__all__ = ["describe_samples", "mark_token"]


def describe_samples(store, indices, *, context: int | None = 60) -> list[dict]:
    """One dict per sample index: ``sample``, ``input_index`` and what the input was.

    Parameters
    ----------
    store : ActivationStore
    indices : sample indices (rows).
    context : for text, characters kept on each side of the marked token (``None``: whole text).

    Returns
    -------
    list of dict; besides ``sample`` and ``input_index``:
    - text, per token: ``text`` with the token marked (see :func:`mark_token`), ``token``,
      ``token_position``, ``token_id``;
    - text, mean over tokens: ``text``;
    - tensor inputs: ``input`` (reshaped to ``manifest["input_shape"]`` when given).
    """
    info = store.sample_info(indices)
    inputs = store.inputs()
    specials = {int(k): v for k, v in store.manifest.get("special_tokens", {}).items()}
    shape = store.manifest.get("input_shape")
    out = []
    for pos, i in enumerate(torch.as_tensor(indices, dtype=torch.long).flatten().tolist()):
        j = int(info["input_index"][pos])
        ex = {"sample": i, "input_index": j}
        if store.kind == "text":
            ex.update(_text_example(inputs[j], info, pos, specials, context))
        else:
            x = inputs[j]
            ex["input"] = x.reshape(shape) if shape else x
        out.append(ex)
    return out


def _text_example(text: str, info: dict, pos: int, specials: dict[int, str], context: int | None) -> dict:
    """The fields of one text sample: the whole text (mean over tokens) or its token marked."""
    tpos = int(info.get("token_position", torch.full((pos + 1,), -1))[pos])
    if tpos < 0:
        return {"text": text}
    tid = int(info["token_id"][pos])
    cs, ce = int(info["char_start"][pos]), int(info["char_end"][pos])
    token, marked = mark_token(text, cs, ce, tpos, specials.get(tid, f"<{tid}>"), context)
    return {"token_position": tpos, "token_id": tid, "token": token, "text": marked}


def mark_token(text: str, start: int, end: int, position: int, special: str, context: int | None) -> tuple[str, str]:
    """Return ``(token, text with the token wrapped in [[...]] and trimmed to context characters a side)``.

    ``start``/``end`` are the token's character span in ``text``; a token without a span
    (a special token such as ``[CLS]``, or a tokenizer without offsets) is shown as ``special``
    at the start of the text (``position`` 0) or at its end.
    """
    if start < 0 or end <= start:  # special token (no span in the text) or no offsets
        token = special
        start = end = 0 if position == 0 else len(text)
    else:
        token = text[start:end]
    left, right = text[:start], text[end:]
    if context is not None:
        if len(left) > context:
            left = "…" + left[len(left) - context :]
        if len(right) > context:
            right = right[:context] + "…"
    sep_l = " " if start == 0 and end == 0 and position == 0 else ""
    sep_r = " " if start == end and position != 0 else ""
    return token, f"{left}{sep_r}[[{token}]]{sep_l}{right}"
