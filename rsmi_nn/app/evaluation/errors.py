"""Why a run cannot be evaluated against its model: ``rsmi evaluate`` says so in one line, ``rsmi run`` warns."""

__all__ = ["NoHeldOutInputs", "NotEvaluable"]


class NotEvaluable(ValueError):
    """The run cannot be evaluated against its model (no held-out input, outputs that are not logits or an
    embedding, a module that returns no tensor): ``rsmi evaluate`` says why, ``rsmi run`` warns and goes on."""


class NoHeldOutInputs(NotEvaluable):
    """The run recorded every input of its source, so none is held out (``rsmi run`` then skips the evaluation)."""
