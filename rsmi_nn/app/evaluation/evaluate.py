"""``evaluate_run(run_dir)``: does the model notice when each level's coarse variables replace its layers?

For every level of a run of a model source, and for rsmi and each baseline with the same number of
latents J (``rsmi_nn.baselines.fit_baseline``: ``block-pca``/``block-mean`` on the level's blocks as
unions of level-0 units, global ``pca``, a TopK ``sae``):

1. encode the held-out activations (:mod:`.held_out`) — rsmi with the run's own filters
   (:meth:`rsmi_nn.Run.encode`), a baseline with its encoder fitted on the flow's samples;
2. decode them with a ridge least-squares decoder fitted on the flow's samples (:mod:`.decoder`);
3. splice the reconstruction into the model, all recorded modules at once and one at a time, and
   compare the output with the clean run (:mod:`.metrics`), also normalised between clean (1) and
   mean ablation of the recorded modules (0);
4. for rsmi, the worst case (:mod:`.worst_case`) and the per-variable effect (:mod:`.variable_effect`).

Writes ``run_dir/evaluation.json`` (layout in :func:`evaluate_run`).
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path

import torch

from graphs.distributed import is_writer
from rsmi_nn.app.evaluation.decoder import LinearDecoder, Targets, explained_variance, reconstruct
from rsmi_nn.app.evaluation.held_out import held_out_model
from rsmi_nn.app.evaluation.metrics import normalised
from rsmi_nn.app.evaluation.variable_effect import variable_effects
from rsmi_nn.app.evaluation.worst_case import Subspace, worst_case

__all__ = ["EVALUATION_JSON", "evaluate_run", "evaluation_is_current", "read_evaluation"]

log = logging.getLogger(__name__)

EVALUATION_JSON = "evaluation.json"
#: a level whose discarded directions move the output at least this fraction of its kept ones is flagged
DANGER_RATIO = 1.0


class _Outputs:
    """Clean and mean-ablated outputs, and the method entries measured against them."""

    def __init__(self, spliced, kind, clean: list[torch.Tensor], x_test: torch.Tensor, x_train_mean: torch.Tensor):
        self.spliced, self.kind, self.clean = spliced, kind, clean
        self.clean_values = kind.summary(self.clean, self.clean, spliced.batches)
        self.x_test = x_test
        self.x_test_variance = (x_test - x_test.mean(0)).pow(2).sum(dtype=torch.float64)
        ablated = spliced.outputs(x_train_mean.expand(spliced.num_rows, -1))
        self.ablated_values = self.measure_values(ablated)

    def measure_values(self, outputs) -> dict:
        values = self.kind.summary(self.clean, outputs, self.spliced.batches)
        change = torch.cat([self.kind.input_change(c, o, b)
                            for c, o, b in zip(self.clean, outputs, self.spliced.batches, strict=True)])
        values["output_change"] = float(change.double().mean())
        return values

    def entry(self, outputs) -> dict:
        values = self.measure_values(outputs)
        norm = normalised({k: v for k, v in values.items() if k in self.clean_values}, self.clean_values,
                          self.ablated_values)
        return {**values, "recovered": norm[self.kind.metric], "normalised": norm}


def _method_entry(outs: _Outputs, x_hat, *, per_module: bool) -> dict:
    entry = {"explained_variance": explained_variance(outs.x_test, x_hat, outs.x_test_variance),
             **outs.entry(outs.spliced.outputs(x_hat))}
    if per_module and len(outs.spliced.modules) > 1:
        entry["per_module"] = {m: outs.entry(outs.spliced.outputs(x_hat, modules={m})) for m in outs.spliced.modules}
    return entry


def _baseline_codes(method: str, run, level: int, train, x_test, num_latents: int, options, seed: int):
    """Codes ``[N, J]`` of the flow's samples (``train``: their :class:`~rsmi_nn.baselines.Standardised`) and of
    the held-out rows ``x_test``."""
    from rsmi_nn.baselines import fit_baseline

    blocks = run.unit_blocks(level) if method.startswith("block-") else None
    lv = run.levels[level]
    n = lv.num_blocks if method == "block-mean" else num_latents
    kwargs = {"seed": seed}
    if method == "sae":
        kwargs["sae_steps"] = options.sae_steps
    enc = fit_baseline(method, train, blocks, num_latents=n, **kwargs)
    return enc.latents(train.z), enc.encode(x_test)


def _level(run, level: int, outs: _Outputs, targets: Targets, train, codes_train, codes_test, options, seed,
           timings):
    lv = run.levels[level]
    J = lv.num_coarse
    x_test = outs.x_test
    methods: dict[str, dict] = {}
    t0 = time.perf_counter()
    dec = LinearDecoder.fit(codes_train, targets, ridge=options.ridge)
    x_hat = dec.decode(codes_test)
    methods["rsmi"] = _method_entry(outs, x_hat, per_module=options.per_module)
    timings["rsmi"] = timings.get("rsmi", 0) + time.perf_counter() - t0
    for method in options.baselines:
        t0 = time.perf_counter()
        b_train, b_test = _baseline_codes(method, run, level, train, x_test, J, options, seed)
        b_hat = reconstruct(b_train, targets, b_test, ridge=options.ridge)
        methods[method] = _method_entry(outs, b_hat, per_module=options.per_module)
        methods[method]["num_latents"] = int(b_train.shape[1])
        timings[method] = timings.get(method, 0) + time.perf_counter() - t0
    t0 = time.perf_counter()
    rho = float((x_test - x_hat).norm(dim=1).mean())
    head = outs.spliced.head(options.worst_case_inputs)
    clean_head = head.outputs()
    wc = worst_case(head, outs.kind, x_test[:head.num_rows], clean_head, Subspace(run.feature_map_sparse(level).T),
                    rho, starts=options.worst_case_starts, steps=options.worst_case_steps, seed=seed)
    wc["flagged"] = bool(math.isfinite(wc["ratio"]) and wc["ratio"] >= DANGER_RATIO)
    timings["worst_case"] = timings.get("worst_case", 0) + time.perf_counter() - t0
    t0 = time.perf_counter()
    eff_model = outs.spliced.head(options.effect_inputs)
    effects = variable_effects(eff_model, outs.kind, x_test[:eff_model.num_rows], eff_model.outputs(),
                               codes_test[:eff_model.num_rows], dec)
    timings["variable_effect"] = timings.get("variable_effect", 0) + time.perf_counter() - t0
    return {"level": level, "num_latents": J, "methods": methods, "worst_case": wc,
            "variable_effect": [float(v) for v in effects]}


def _fit_rows(num_samples: int, fit_samples: int, seed: int) -> torch.Tensor | None:
    """Sorted indices of a seeded subset of ``fit_samples`` of the flow's samples (``None``: all of them)."""
    if num_samples <= fit_samples:
        return None
    gen = torch.Generator().manual_seed(seed)
    return torch.randperm(num_samples, generator=gen)[:fit_samples].sort().values


def _take_rows(x: torch.Tensor, rows: torch.Tensor | None) -> torch.Tensor:
    return x if rows is None else x[rows]


def evaluate_run(run_dir: str | Path, options=None, *, device: str = "cpu", seed: int | None = None,
                 write: bool = True, **overrides) -> dict:
    """Evaluate every level of the run in ``run_dir``; writes ``run_dir/evaluation.json`` and returns it.

    Parameters
    ----------
    run_dir : a run directory written by ``rsmi run`` from a model source (its ``activations/`` and
        ``config.toml`` are read; the model is loaded again from the source).
    options : :class:`rsmi_nn.app.config.EvaluateOptions` (default: its defaults); ``overrides`` replace
        single options (``held_out=50``, ``baselines=["block-pca"]``, ...).
    device : where the model runs; seed: of the baselines and the worst-case starts (default: the run's).

    Inside a ``torch.distributed`` process group every rank must call it: the model passes over the held-out
    batches (clean, mean-ablated, each method's splice) are shared out by batches (:mod:`.model`), the rest is
    replicated, every rank returns the same dict and rank 0 writes it (only ``seconds`` may differ by rank).

    Returns
    -------
    dict ``{"metric": "kl" | "cosine" | "ce", "model_kind", "held_out", "decoder", "clean",
    "mean_ablation", "levels": [{"level", "num_latents", "methods": {"rsmi": {...}, <baseline>: {...}},
    "worst_case": {"discarded", "kept", "random", "random_discarded", "ratio", "flagged", "norm", ...},
    "variable_effect": [J floats]}], "seconds"}``; each method holds ``explained_variance``, the metrics
    of the model kind (classifier ``kl`` nats, ``agreement``, ``accuracy``; encoder ``cosine``,
    ``spearman``; causal LM ``ce``, ``delta_ce``, ``kl``), ``output_change``, ``recovered`` (the
    metric normalised), ``normalised`` (every metric) and ``per_module`` (one module spliced at a time).
    """
    from estimators.device import resolve_device
    from rsmi_nn.app.config import Config, EvaluateOptions, read_run_config
    from rsmi_nn.app.files import write_json
    from rsmi_nn.baselines import standardise
    from rsmi_nn.run import load_run

    t_start = time.perf_counter()
    device = resolve_device(device)
    options = (options or EvaluateOptions()).replace(**overrides) if overrides else (options or EvaluateOptions())
    root = Path(run_dir)
    run = load_run(root)
    config = Config.from_dict(read_run_config(root), origin=str(root / "config.toml"))
    seed = config.run.seed if seed is None else seed
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        spliced, kind, store, held = held_out_model(run, root, config, options.held_out, device=device)
        x_test, clean = spliced.record(outputs=True)
        fit_rows = _fit_rows(store.num_samples, options.fit_samples, seed)
        x_train = store.to_tensor(units=run.unit_names, rows=fit_rows)
        targets = Targets.of(x_train)  # centred once, shared by every decoder
        outs = _Outputs(spliced, kind, clean, x_test, targets.mean[None])
        codes_test = run.encode(x_test)
        timings: dict[str, float] = {}
        train = standardise(x_train) if options.baselines else None  # shared by every baseline fit
        del x_train
        levels = [_level(run, i, outs, targets, train, _take_rows(lv.coarse_samples(), fit_rows), codes_test[i],
                         options, seed, timings) for i, lv in enumerate(run.levels)]
    result = {
        "metric": kind.metric, "model_kind": kind.name, "held_out": held,
        "decoder": {"kind": "ridge least squares on standardised codes, fitted on the flow's samples",
                    "ridge": options.ridge, "fit_samples": int(targets.centred.shape[0])},
        "clean": outs.clean_values,
        "mean_ablation": {**outs.ablated_values, "recovered": 0.0},
        "levels": levels,
        "baselines": {"methods": list(options.baselines), "sae_steps": options.sae_steps},
        "options": options.to_dict(),
        "seconds": {**{k: round(v, 3) for k, v in timings.items()},
                    "total": round(time.perf_counter() - t_start, 3)},
    }
    if write and is_writer():  # under torchrun every rank evaluates its share of the held-out batches
        write_json(root / EVALUATION_JSON, result)
    return result


def read_evaluation(run_dir: str | Path) -> dict | None:
    """``run_dir/evaluation.json`` as a dict, or ``None`` when the run has not been evaluated."""
    import json

    path = Path(run_dir) / EVALUATION_JSON
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as err:
        raise ValueError(f"{str(path)!r} is not readable JSON ({err}); run `rsmi evaluate {run_dir}` again") from None


def evaluation_is_current(run_dir: str | Path, options) -> bool:
    """Whether ``run_dir/evaluation.json`` exists and was made with ``options``."""
    try:
        old = read_evaluation(run_dir)
    except ValueError:
        return False
    return old is not None and old.get("options") == options.to_dict()
