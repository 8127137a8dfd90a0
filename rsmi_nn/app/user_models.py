"""User model sources: ``"python:<module.path or file.py>:<factory>"`` with ``data=<file>``.

Any user model: ``factory`` (a callable returning an ``nn.Module``, or an ``nn.Module``
attribute) from an importable module or a ``.py`` file. ``data``: ``.npy``, ``.npz``,
``.safetensors`` or ``.pt`` (one tensor, chosen as :func:`graphs.tensor_files.load_tensor`
does: the only one, else ``"samples"``/``"x"``/``"X"``/``"spins"``) or ``.txt`` (one text
per non-empty line; the factory then returns ``(model, tokenizer)``). Option
``modules`` (patterns); by default every leaf activation module (ReLU, GELU, Tanh, ...,
i.e. classes from ``torch.nn.modules.activation`` other than softmax-like ones), or, when the
model has none, every leaf ``nn.Linear``.

:func:`rsmi_nn.app.sources.load_source` hands ``"python:..."`` names to :func:`python_source`.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import os
import sys
from pathlib import Path

from torch import nn

from graphs.tensor_files import TENSOR_SUFFIXES, load_tensor
from rsmi_nn.app.sources import Source

__all__ = ["default_modules", "load_texts", "python_source"]


def _import_target(target: str):
    """Import a module by dotted path, or a ``.py`` file under a private module name."""
    if target.endswith(".py") or os.sep in target or "/" in target:
        file = Path(target)
        if not file.is_file():
            raise FileNotFoundError(f"model file {target!r} not found; give an existing .py file or a module path")
        mod_name = f"_rsmi_user_{hashlib.sha256(str(file.resolve()).encode()).hexdigest()[:12]}"
        spec = importlib.util.spec_from_file_location(mod_name, file)
        if spec is None or spec.loader is None:
            raise ValueError(f"cannot import {target!r} as a Python file; give a .py file")
        module = importlib.util.module_from_spec(spec)
        sys.modules[mod_name] = module
        try:
            spec.loader.exec_module(module)
        except (Exception, SystemExit) as err:  # the user's file exiting must not end rsmi silently
            sys.modules.pop(mod_name, None)
            what = f"called sys.exit({err.code!r})" if isinstance(err, SystemExit) else f"raised {type(err).__name__}: {err}"
            raise ValueError(f"importing the model file {target!r} {what}; fix the file so that it imports "
                             "without side effects (run your script code under `if __name__ == '__main__':`)") from err
        return module
    try:
        return importlib.import_module(target)
    except ModuleNotFoundError as err:
        raise ValueError(f"cannot import module {target!r} ({err}); check the module path or give a .py file") from err


def load_texts(path) -> list[str]:
    """The non-empty lines of a UTF-8 text file, stripped: one text per line."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"text file {str(p)!r} not found; pass an existing .txt file with one text per line")
    if p.suffix.lower() != ".txt":
        raise ValueError(f"text file {str(p)!r} has suffix {p.suffix!r}; pass a .txt file with one text per line")
    try:
        texts = [ln.strip() for ln in p.read_text(encoding="utf-8").splitlines() if ln.strip()]
    except UnicodeDecodeError:
        raise ValueError(f"text file {str(p)!r} is not UTF-8 text; pass a .txt file with one text per line") from None
    if not texts:
        raise ValueError(f"text file {str(p)!r} has no non-empty lines")
    return texts


def _load_data(data) -> tuple[object, object, str]:
    """The inputs in a user's data file: ``(texts, None, "text")`` from ``.txt``, else ``(tensor, mask, "tensor")``.

    A multi-tensor file holding ``input_ids`` gives those token ids and its ``attention_mask``
    (or ``None``); any other file its one tensor (:func:`graphs.tensor_files.load_tensor`).
    """
    if data is None:
        raise ValueError("a 'python:' source needs data=<file> (.pt, .npy, .npz, .safetensors or .txt)")
    p = Path(data)
    if not p.is_file():
        raise FileNotFoundError(f"data file {str(p)!r} not found; pass an existing .pt/.npy/.npz/.safetensors/.txt file")
    suffix = p.suffix.lower()
    if suffix == ".txt":
        return load_texts(p), None, "text"
    if suffix not in TENSOR_SUFFIXES:
        raise ValueError(f"data file {str(p)!r} has suffix {suffix!r}; use .pt, .npy, .npz, .safetensors or .txt")
    x, mask = _token_ids(p)
    if x is None:
        x = load_tensor(p, what="data")
    if x.ndim < 1 or x.shape[0] == 0:
        raise ValueError(f"data file {str(p)!r} must hold a non-empty tensor (n_inputs, ...), got shape {tuple(x.shape)}")
    return x, mask, "tensor"


def _token_ids(p: Path):
    """``(input_ids, attention_mask or None)`` of a multi-tensor file holding ``input_ids``, else ``(None, None)``."""
    if p.suffix.lower() == ".npy":
        return None, None
    try:
        ids = load_tensor(p, "input_ids", what="data")
    except ValueError as err:
        if "has no tensor 'input_ids'" in str(err):
            return None, None
        raise
    try:
        mask = load_tensor(p, "attention_mask", what="data")
    except ValueError as err:
        if "has no tensor 'attention_mask'" not in str(err):
            raise
        mask = None
    return ids, mask


_SKIP_ACTIVATIONS = (nn.Softmax, nn.LogSoftmax, nn.Softmin, nn.Softmax2d, nn.MultiheadAttention)


def default_modules(model: nn.Module) -> list[str]:
    """Leaf activation modules of ``model`` (softmax-like excluded), else its leaf ``nn.Linear`` modules."""
    import torch.nn.modules.activation as act

    leaves = [(n, m) for n, m in model.named_modules() if n and not any(True for _ in m.children())]
    acts = [n for n, m in leaves if type(m).__module__ == act.__name__ and not isinstance(m, _SKIP_ACTIVATIONS)]
    if acts:
        return acts
    linear = [n for n, m in leaves if isinstance(m, nn.Linear)]
    if not linear:
        raise ValueError(
            f"{type(model).__name__} has no leaf activation or Linear modules; pass modules=[patterns] explicitly"
        )
    return linear


def python_source(spec: str, *, data=None, modules=None, **factory_kwargs) -> Source:
    """The source ``"python:<spec>"``: the model ``factory(**factory_kwargs)`` with the inputs in ``data``.

    ``spec`` is ``"<module.path or file.py>:<factory>"``; ``modules`` (pattern or patterns)
    defaults to :func:`default_modules` of the model.
    """
    target, sep, factory_name = spec.rpartition(":")
    if not sep or not target or not factory_name:
        raise ValueError(f"'python:{spec}' must look like 'python:<module.path or file.py>:<factory>'")
    module = _import_target(target)
    if not hasattr(module, factory_name):
        public = [n for n in dir(module) if not n.startswith("_")][:10]
        raise ValueError(f"{target!r} has no attribute {factory_name!r}; available names include {public}")
    factory = getattr(module, factory_name)
    if isinstance(factory, nn.Module):
        result = factory
    elif callable(factory):
        try:
            result = factory(**factory_kwargs)
        except (Exception, SystemExit) as err:
            args = ", ".join(f"{k}={v!r}" for k, v in factory_kwargs.items())
            raise ValueError(f"the model factory {target}:{factory_name}({args}) failed: {type(err).__name__}: {err}; "
                             "fix the factory or the options passed to it (-o key=value)") from err
    else:
        raise TypeError(f"{target}:{factory_name} is a {type(factory).__name__}, not callable; point to a factory")
    inputs, mask, kind = _load_data(data)
    tokenizer = None
    if isinstance(result, tuple) and len(result) == 2:
        result, tokenizer = result
    if not isinstance(result, nn.Module):
        raise TypeError(
            f"{target}:{factory_name} returned {type(result).__name__}; it must return an nn.Module "
            "(or (model, tokenizer) for text data)"
        )
    if kind == "text" and tokenizer is None:
        raise ValueError(f"data {str(data)!r} holds texts, so {target}:{factory_name} must return (model, tokenizer)")
    if modules is None:
        modules = default_modules(result)
    elif isinstance(modules, str):
        modules = [modules]
    return Source(
        model=result.eval(),
        inputs=inputs,
        modules=list(modules),
        tokenizer=tokenizer,
        kind=kind,
        description=f"user model {target}:{factory_name} ({type(result).__name__}) on {Path(data).name}",
        attention_mask=mask,
    )
