"""A trained model family on the planted hierarchy, and probes of where its hidden units keep each level.

The models read the units ``x`` of :func:`experiments.tmr.sample_tmr` and classify the **sign pattern of
the level-(depth-2) latents** (the level just below the root: ``branching`` latents, ``2^branching``
classes; the root enters through the parent coupling), so the task is defined by the top of the
hierarchy and nothing asks the network to keep the level-0 latents. The family:

- ``mlp-x1 … mlp-x8``: :class:`rsmi_nn.app.sources.DigitsMLP` with hidden sizes ``(w, w)``,
  ``w = base_width × 1, 2, 4, 8``; the recorded layer is ``hidden.0`` (post-ReLU, ``w`` units);
- ``transformer``: :class:`UnitTransformer`, every unit a token (its value through ``Linear(1, d)`` plus a
  learnt unit embedding), pre-norm encoder layers, mean pooling; the recorded layer is the last encoder
  layer's token outputs, flattened to ``num_units × d_model`` hidden units (unit-major).

Training is deterministic (one CPU thread, ``torch.use_deterministic_algorithms``, seeded data order and
initialisation) and cached as safetensors under :func:`rsmi_nn.app.sources.cache_dir`, keyed by a hash of
the recipe (:func:`model_recipe`). One sample of ``n_train + n_val + n_probe`` rows is drawn per recipe:
the model trains on the first rows, its accuracy is read on the next ``n_val``, and the probes
(:func:`score_model`) use the last ``n_probe`` rows, which the model never saw.

Probes (:func:`score_model`): the hidden layer of the probe rows is coarse-grained by ``build_graph`` +
``run_flow``; for every flow level's coarse variables (``Run.encode`` of held-out rows), and for the
baselines of :mod:`rsmi_nn.baselines` with the same blocks / number of latents, the held-out R² of a linear
probe of every planted latent, averaged per planted level. Per hidden unit, its best |corr| with each
planted level's latents says which level it carries.
"""

from __future__ import annotations

import hashlib
import json
import logging
import tempfile
import time

import numpy as np
import torch
from torch import nn

from estimators.validation import check_positive_int
from rsmi_nn.app.model_training import minibatches, reproducible_cpu, train_step

__all__ = ["FAMILY", "GENERATOR", "TRAINING", "UnitTransformer", "hidden_activations", "load_model", "model_recipe", "probe_r2",
           "reference_accuracy", "score_model", "task_labels", "tmr_data", "train_model", "unit_levels"]

log = logging.getLogger(__name__)

FAMILY = ("mlp-x1", "mlp-x2", "mlp-x4", "mlp-x8", "transformer")
# the study's planted tree: the nuisance-dominated setting (experiments.tmr_study "nuisance")
GENERATOR = {"branching": 4, "depth": 3, "group_size": 4, "nuisance": 2.0}
# AdamW settings per kind (chosen on the validation rows of the default recipe, seed 0)
TRAINING = {"mlp": {"epochs": 8, "lr": 1e-3, "weight_decay": 0.1},
            "transformer": {"epochs": 20, "lr": 3e-3, "weight_decay": 1e-4}}


def model_recipe(name: str, *, generator: dict | None = None, base_width: int = 32, d_model: int = 8,
                 layers: int = 1, heads: int = 2, n_train: int = 40_000, n_val: int = 4_000, n_probe: int = 12_000,
                 epochs: int | None = None, batch_size: int = 128, lr: float | None = None,
                 weight_decay: float | None = None, seed: int = 0) -> dict:
    """The training recipe of one family member (``name`` in :data:`FAMILY`, or ``mlp-x<m>`` for any m).

    ``epochs``, ``lr``, ``weight_decay`` default per kind (:data:`TRAINING`): the MLPs overfit the noisy
    sign labels without a strong weight decay, the transformer needs more epochs at a higher rate.
    """
    if name == "transformer":
        arch = {"kind": "transformer", "d_model": check_positive_int(d_model, name="d_model"),
                "layers": check_positive_int(layers, name="layers"), "heads": check_positive_int(heads, name="heads")}
        if d_model % heads:
            raise ValueError(f"d_model={d_model} must be a multiple of heads={heads}")
    elif name.startswith("mlp-x") and name[5:].isdigit() and int(name[5:]) > 0:
        arch = {"kind": "mlp", "width": int(name[5:]) * check_positive_int(base_width, name="base_width", minimum=2)}
    else:
        raise ValueError(f"unknown model {name!r}; choose one of {', '.join(FAMILY)} (or mlp-x<m>, m >= 1)")
    train = TRAINING[arch["kind"]]
    gen = dict(GENERATOR if generator is None else generator)
    for key in ("n", "seed"):
        if key in gen:
            raise ValueError(f"generator sets {key!r}; the recipe's n_train/n_val/n_probe and seed set it")
    return {"recipe": 1, "name": name, "arch": arch, "generator": gen,
            "n_train": check_positive_int(n_train, name="n_train", minimum=2),
            "n_val": check_positive_int(n_val, name="n_val"), "n_probe": check_positive_int(n_probe, name="n_probe"),
            "epochs": check_positive_int(train["epochs"] if epochs is None else epochs, name="epochs"),
            "batch_size": check_positive_int(batch_size, name="batch_size"),
            "lr": float(train["lr"] if lr is None else lr),
            "weight_decay": float(train["weight_decay"] if weight_decay is None else weight_decay), "seed": int(seed)}


def tmr_data(recipe: dict):
    """The recipe's one sample (``TMRSample`` of ``n_train + n_val + n_probe`` rows) and its task labels ``[n]``."""
    from experiments.tmr import sample_tmr

    n = recipe["n_train"] + recipe["n_val"] + recipe["n_probe"]
    sample = sample_tmr(n, seed=recipe["seed"], **recipe["generator"])
    return sample, task_labels(sample.latents[-2])


def task_labels(top: torch.Tensor) -> torch.Tensor:
    """LongTensor ``[n]``: the sign pattern of ``top [n, G]`` as a class in ``0 … 2^G - 1`` (bit g: ``top[:, g] > 0``)."""
    bits = (top > 0).long()
    return (bits * (2 ** torch.arange(top.shape[1]))).sum(1)


class UnitTransformer(nn.Module):
    """Units as tokens: ``token_u = Linear(1, d)(x_u) + embed[u]``, pre-norm encoder layers, mean pool, linear head.

    ``forward(x [n, U]) -> logits [n, num_classes]``; ``blocks.i`` outputs ``[n, U, d_model]``.
    """

    def __init__(self, num_units: int, num_classes: int, d_model: int = 8, layers: int = 1, heads: int = 2):
        super().__init__()
        self.value = nn.Linear(1, d_model)
        self.embed = nn.Embedding(num_units, d_model)
        self.blocks = nn.ModuleList(
            nn.TransformerEncoderLayer(d_model, heads, dim_feedforward=2 * d_model, dropout=0.0, batch_first=True,
                                       norm_first=True) for _ in range(layers))
        self.norm = nn.LayerNorm(d_model)
        self.out = nn.Linear(d_model, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = self.value(x.unsqueeze(-1)) + self.embed.weight
        for block in self.blocks:
            t = block(t)
        return self.out(self.norm(t).mean(1))


def _build(recipe: dict, num_units: int, num_classes: int) -> nn.Module:
    from rsmi_nn.app.sources import DigitsMLP

    arch = recipe["arch"]
    if arch["kind"] == "mlp":
        return DigitsMLP((num_units, arch["width"], arch["width"]), n_classes=num_classes)
    return UnitTransformer(num_units, num_classes, arch["d_model"], arch["layers"], arch["heads"])


def hidden_module(recipe: dict) -> str:
    """The recorded module: ``hidden.0`` of an MLP, the last encoder layer of the transformer."""
    return "hidden.0" if recipe["arch"]["kind"] == "mlp" else f"blocks.{recipe['arch']['layers'] - 1}"


def train_model(recipe: dict) -> tuple[nn.Module, dict]:
    """Train one family member on CPU, one thread, deterministic algorithms; returns (model in eval mode, stats).

    ``stats``: ``val_accuracy`` (task accuracy on the ``n_val`` rows), ``train_accuracy``, ``reference_accuracy``
    (the sign of the exact linear read-out of the top latents on the same rows), ``num_classes``.
    """
    sample, y = tmr_data(recipe)
    x = sample.x
    n_tr, n_val = recipe["n_train"], recipe["n_val"]
    num_classes = 2 ** sample.latents[-2].shape[1]
    gen = torch.Generator().manual_seed(recipe["seed"])
    with reproducible_cpu(recipe["seed"], deterministic=True):
        model = _build(recipe, x.shape[1], num_classes)
        opt = torch.optim.AdamW(model.parameters(), lr=recipe["lr"], weight_decay=recipe["weight_decay"])
        model.train()
        for idx in minibatches(n_tr, recipe["batch_size"], recipe["epochs"], gen):
            train_step(opt, nn.functional.cross_entropy(model(x[idx]), y[idx]))
        model.eval()
        with torch.no_grad():
            acc = [float((_logits(model, x[rows]).argmax(1) == y[rows]).float().mean())
                   for rows in (slice(0, n_tr), slice(n_tr, n_tr + n_val))]
    stats = {"train_accuracy": acc[0], "val_accuracy": acc[1], "num_classes": num_classes, "num_units": x.shape[1],
             "reference_accuracy": reference_accuracy(sample, slice(n_tr, n_tr + n_val))}
    return model, stats


def _logits(model: nn.Module, x: torch.Tensor, chunk: int = 2048) -> torch.Tensor:
    return torch.cat([model(x[a:a + chunk]) for a in range(0, x.shape[0], chunk)])


def reference_accuracy(sample, rows: slice) -> float:
    """Task accuracy of ``sign(E[z_top | x])`` (the exact linear read-out from the covariance) on ``rows``.

    Not the Bayes rate (the top latents' posterior is correlated), but the natural bar for a trained model.
    """
    w = np.linalg.solve(sample.covariance, sample.unit_latent_cov[-2])  # [U, G]
    pred = task_labels(sample.x[rows].double() @ torch.from_numpy(w))
    return float((pred == task_labels(sample.latents[-2][rows])).float().mean())


def load_model(recipe: dict, *, cache: bool = True, retrain: bool = False) -> tuple[nn.Module, dict]:
    """The trained model of ``recipe`` (eval mode) and its stats, from the cache when present (else trained, saved)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from graphs.atomic import atomic_save_tensors
    from rsmi_nn.app.sources import cache_dir

    key = hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:16]
    path = cache_dir() / f"tmr-{recipe['name']}-{key}.safetensors"
    if cache and not retrain and path.is_file():
        try:
            from safetensors import safe_open

            with safe_open(str(path), "pt") as f:
                stats = json.loads(f.metadata()["stats"])
            model = _build(recipe, stats["num_units"], stats["num_classes"])
            model.load_state_dict(load_file(str(path)))
            model.eval()
            log.info("%s loaded from cache %s", recipe["name"], path)
            return model, {**stats, "cache": str(path), "cached": True}
        except (SafetensorError, OSError, KeyError, RuntimeError, ValueError) as err:  # a corrupt entry is rebuilt
            log.warning("cache %s unreadable (%s); retraining", path, err)
    t0 = time.time()
    model, stats = train_model(recipe)
    log.info("%s trained in %.1f s: task accuracy %.3f (reference %.3f)", recipe["name"], time.time() - t0,
             stats["val_accuracy"], stats["reference_accuracy"])
    if cache:
        atomic_save_tensors(path, model.state_dict(), metadata={"stats": json.dumps(stats, sort_keys=True),
                                                                "recipe": json.dumps(recipe, sort_keys=True)})
    return model, {**stats, "cache": str(path) if cache else None, "cached": False,
                   "train_seconds": time.time() - t0}


@torch.no_grad()
def hidden_activations(model: nn.Module, recipe: dict, x: torch.Tensor, chunk: int = 2048) -> torch.Tensor:
    """The recorded layer (:func:`hidden_module`) on ``x [n, U]``, flattened to ``[n, H]`` float32."""
    from graphs.hooks import capture

    name, parts = hidden_module(recipe), []
    for a in range(0, x.shape[0], chunk):
        with capture(model, name) as acts:
            model(x[a:a + chunk])
        parts.append(acts[name].reshape(min(chunk, x.shape[0] - a), -1).float())
    return torch.cat(parts)


def _standardise(a: torch.Tensor, like: torch.Tensor | None = None) -> torch.Tensor:
    ref = (a if like is None else like).double()
    std = ref.std(0)
    return (a.double() - ref.mean(0)) / torch.where(std > 0, std, torch.ones_like(std))


def probe_r2(f_fit: torch.Tensor, f_test: torch.Tensor, z_fit: torch.Tensor, z_test: torch.Tensor,
             ridge: float = 1e-3) -> np.ndarray:
    """Held-out R² ``[G]`` of a linear probe (ridge ``ridge · n_fit`` on standardised features) per column of ``z``.

    ``f_fit [n1, c]``, ``z_fit [n1, G]`` fit the probe; it is scored on ``f_test [n2, c]``, ``z_test [n2, G]``
    (R² = 1 - SSE / SST around the test mean; 0 is chance, negative is worse than chance). Overfitting biases it
    by about ``-(1 - R²) · c / n1``: compare probes with the same number of features.
    """
    a, b = _standardise(f_fit), _standardise(f_test, like=f_fit)
    zc = z_fit.double() - z_fit.double().mean(0)
    gram = a.T @ a + ridge * a.shape[0] * torch.eye(a.shape[1], dtype=a.dtype)
    coef = torch.linalg.solve(gram, a.T @ zc)
    pred = b @ coef + z_fit.double().mean(0)
    zt = z_test.double()
    sse = ((zt - pred) ** 2).sum(0)
    sst = ((zt - zt.mean(0)) ** 2).sum(0)
    return (1 - sse / sst).numpy()


def _probe_levels(f: torch.Tensor, latents: list[torch.Tensor], half: int) -> list[float]:
    """Mean held-out probe R² per planted level (fit on the first ``half`` rows, scored on the rest)."""
    return [float(probe_r2(f[:half], f[half:], z[:half], z[half:]).mean()) for z in latents]


def _abs_corr(f: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """``[c, G]`` |corr| of every column of ``f [n, c]`` with every column of ``z [n, G]`` (0 for a constant column)."""
    def cols(a):
        a = a.double() - a.double().mean(0)
        return a / a.norm(dim=0).clamp_min(1e-12)

    return (cols(f).T @ cols(z)).abs()


def unit_levels(h: torch.Tensor, latents: list[torch.Tensor]) -> dict:
    """Which planted level each unit (a column of ``h [n, H]``) carries: its best |corr| with each level's latents.

    ``latents[l] [n, G_l]``. Returns ``best_corr`` ``[H][L]``, ``level`` ``[H]`` (the argmax; -1 for a constant
    unit), ``count`` ``[L]`` (units per level), ``dead`` and ``mean_best_corr`` ``[L]`` over the units of that level.
    """
    best = torch.stack([_abs_corr(h, z).max(1).values for z in latents], 1)  # [H, L]
    alive = h.double().std(0) > 0
    level = torch.where(alive, best.argmax(1), torch.full_like(best.argmax(1), -1))
    count = [int((level == lv).sum()) for lv in range(len(latents))]
    mean = [float(best[level == lv, lv].mean()) if count[lv] else None for lv in range(len(latents))]
    return {"best_corr": best.tolist(), "level": level.tolist(), "count": count, "dead": int((~alive).sum()),
            "mean_best_corr": mean}


def _best_single(f: torch.Tensor, latents: list[torch.Tensor]) -> list[float]:
    """Per planted level, the mean over its latents of the best |corr| of any single column of ``f``."""
    return [float(_abs_corr(f, z).max(0).values.mean()) for z in latents]


def _scores(f: torch.Tensor, latents: list[torch.Tensor], nuisance: torch.Tensor, half: int) -> dict:
    """Probe R², best single-variable |corr| (test half) and variables per carried level, per planted level;
    ``nuisance_r2``: the mean probe R² of the nuisance variables (what of the variance-dominating noise is kept)."""
    test = [z[half:] for z in latents]
    return {"r2": _probe_levels(f, latents, half), "best_corr": _best_single(f[half:], test),
            "variables_per_level": unit_levels(f[half:], test)["count"],
            "nuisance_r2": _probe_levels(f, [nuisance], half)[0] if nuisance.shape[1] else None}


def score_model(model: nn.Module, recipe: dict, *, n_flow: int | None = None, levels: int = 2, block_size: int = 4,
                k: int = 8, steps: int = 3000, sae_steps: int = 2000, seed: int = 0,
                methods=("rsmi", "block-pca", "block-mean", "pca", "sae"), progress: bool = False) -> dict:
    """RSMI and the baselines on the model's hidden layer, probed for every planted level (held-out rows).

    The hidden layer of the recipe's ``n_probe`` rows: the first ``n_flow`` (default two thirds) fit the graph,
    the flow and the baselines; the rest are encoded, their first half fits the linear probes, the second half
    scores them. Returns ``probe[method][flow_level]`` = {``r2`` [L]: mean held-out probe R² per planted level;
    ``best_corr`` [L]: mean over the level's latents of the best |corr| of one variable; ``variables_per_level``
    [L]: how many variables carry each level best; ``nuisance_r2``: mean probe R² of the nuisance variables};
    the same for all hidden units (``hidden``); ``input_ceiling`` [L] (the exact R² of the best linear read-out
    from ``x``); ``unit_level`` [H] (the planted level each hidden unit carries best on the probes' test rows, -1
    for a constant one, :func:`unit_levels`), ``unit_level_count`` [L], ``unit_level_corr`` [L];
    ``num_latents`` per flow level and the flow's records.
    """
    from graphs import build_graph
    from rsmi_nn import load_run, run_flow
    from rsmi_nn.baselines import fit_baseline

    sample, _ = tmr_data(recipe)
    start = recipe["n_train"] + recipe["n_val"]
    n_flow = (2 * recipe["n_probe"]) // 3 if n_flow is None else check_positive_int(n_flow, name="n_flow", minimum=4)
    if n_flow > recipe["n_probe"] - 8:
        raise ValueError(f"n_flow={n_flow} leaves fewer than 8 of n_probe={recipe['n_probe']} rows to probe on")
    h = hidden_activations(model, recipe, sample.x[start:])
    alive = torch.nonzero(h[:n_flow].std(0) > 0).flatten()  # dead ReLUs carry nothing and cannot be graph nodes
    h_fit, h_test = h[:n_flow, alive], h[n_flow:, alive]
    latents = [z[start + n_flow:] for z in sample.latents]
    nuisance = sample.nuisance_samples[start + n_flow:]
    half = h_test.shape[0] // 2
    units = unit_levels(h[n_flow + half:], [z[half:] for z in latents])  # every hidden unit, -1 where constant
    out = {"model": recipe["name"], "hidden_units": int(h.shape[1]), "alive_units": int(alive.numel()),
           "hidden": _scores(h_test, latents, nuisance, half), "unit_level": units["level"],
           "unit_level_count": units["count"], "unit_level_corr": units["mean_best_corr"],
           "input_ceiling": _input_ceiling(sample), "probe": {}}
    with tempfile.TemporaryDirectory() as tmp:
        flow = run_flow(h_fit, build_graph(h_fit, k=k), levels=levels, block_size=block_size, steps=steps, out=tmp,
                        seed=seed, progress=progress)
        run = load_run(tmp)
        coarse = run.encode(h_test)
        blocks = [run.unit_blocks(lv) for lv in range(len(run.levels))]
        hidden = [run.levels[lv].hidden for lv in range(len(run.levels))]
    out["flow"] = [{key: rec[key] for key in ("level", "num_nodes", "num_blocks", "mi_mean")} for rec in flow.records]
    out["num_latents"] = [int(c.shape[1]) for c in coarse]
    for method in methods:
        per_level = []
        for lv, (blk, hh) in enumerate(zip(blocks, hidden)):
            if method == "rsmi":
                feats = coarse[lv]
            else:
                hh = 1 if method == "block-mean" else hh
                num = (int(blk.max()) + 1) * hh
                enc = fit_baseline(method, h_fit, blk if method.startswith("block") else None, num, seed=seed,
                                   sae_steps=sae_steps)
                feats = enc.encode(h_test)
            per_level.append(_scores(feats, latents, nuisance, half))
        out["probe"][method] = per_level
    return out


def _input_ceiling(sample) -> list[float]:
    """Mean over each planted level's latents of the exact R² of ``E[z | x]`` (the best any read-out of x reaches)."""
    cov = sample.covariance
    return [float(np.mean(np.sum(c * np.linalg.solve(cov, c), 0))) for c in sample.unit_latent_cov]
