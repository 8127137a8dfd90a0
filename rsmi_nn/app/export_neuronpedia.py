"""The coarse variables as feature dashboards in Neuronpedia's JSON layout (SAEDashboard's batch files).

``export_neuronpedia(run_dir)`` reads the export (:func:`rsmi_nn.app.export.export_run`, run first when
missing) and writes ``run_dir/neuronpedia/level_NNN/batch-K.json``: one "SAE set" per level, ``batch_size``
features per file, each file ``{"model_id", "layer", "sae_set", "features": [...]}`` with the fields of
SAEDashboard's ``NeuronpediaDashboardFeature``:

- ``feature_index``: the coarse variable ``v`` (block ``v // h``, component ``v % h``);
- ``neuron_alignment_indices`` / ``_values`` / ``_l1``: its top level-0 units (indices into the run's unit
  names), their composed weights and each weight's share of the column's L1 norm;
- ``frac_nonzero``; ``freq_hist_data_bar_values`` / ``_heights``: the histogram of the variable over every
  sample (bin centres, counts);
- ``activations``: the top examples as one bin (``bin_min = -1``, ``bin_max`` = the largest value,
  ``bin_contains = -1``, SAEDashboard's "top activations"), then the bottom examples as an interval bin
  (``bin_min``/``bin_max`` their range, ``bin_contains`` their share of the samples). For text recorded per
  token, ``tokens``/``values`` are the context and the variable on each of its tokens; for other inputs, one
  token naming the input (``"input 17"``, or the text) with the variable's value;
- no logit effects (``pos_str``/``neg_str``/``logits_hist_*`` and ``correlated_*`` stay empty lists).

``neuronpedia/index.json`` lists the files and, per level and feature, what the layout has no field for: MI
and its standard error (nats), block, parents and children.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from rsmi_nn.app.config import read_run_config
from rsmi_nn.app.export import export_run, is_exported
from rsmi_nn.app.files import write_json
from rsmi_nn.run import load_run

__all__ = ["export_neuronpedia"]


def _activation(ex: dict, bin_min: float, bin_max: float, bin_contains: float) -> dict:
    if "context_tokens" in ex:
        tokens, values = list(ex["context_tokens"]), [float(v) for v in ex["context_values"]]
    else:
        text = ex.get("text")
        tokens = [str(text).replace("[[", "").replace("]]", "")] if text is not None else [f"input {ex['input_index']}"]
        values = [float(ex["value"])]
    return {"bin_min": bin_min, "bin_max": bin_max, "bin_contains": bin_contains, "tokens": tokens,
            "values": [round(v, 3) for v in values]}


def _feature(var: dict, top: list[dict], bottom: list[dict], l1: float, unit_index: dict[str, int],
             num_samples: int, meta: dict) -> dict:
    hist = var.get("histogram") or {}
    counts = hist.get("counts", [])
    lo, hi = hist.get("min", 0.0), hist.get("max", 0.0)
    width = (hi - lo) / len(counts) if counts else 0.0
    acts = []
    if top:
        acts += [_activation(ex, -1, round(float(top[0]["value"]), 3), -1) for ex in top]
    if bottom:
        vals = [float(ex["value"]) for ex in bottom]
        acts += [_activation(ex, round(min(vals), 3), round(max(vals), 3), round(len(bottom) / max(num_samples, 1), 6))
                 for ex in bottom]
    units = var.get("top_units", [])
    return {
        "feature_index": var["variable"],
        "neuron_alignment_indices": [unit_index.get(u["name"], -1) for u in units],
        "neuron_alignment_values": [round(float(u["weight"]), 3) for u in units],
        "neuron_alignment_l1": [round(abs(float(u["weight"])) / l1, 3) if l1 > 0 else 0.0 for u in units],
        "correlated_neurons_indices": [], "correlated_neurons_l1": [], "correlated_neurons_pearson": [],
        "correlated_features_indices": [], "correlated_features_l1": [], "correlated_features_pearson": [],
        "neg_str": [], "neg_values": [], "pos_str": [], "pos_values": [],
        "frac_nonzero": round(float(hist.get("frac_nonzero", 0.0)), 6),
        "freq_hist_data_bar_values": [round(lo + (i + 0.5) * width, 3) for i in range(len(counts))],
        "freq_hist_data_bar_heights": [float(c) for c in counts],
        "logits_hist_data_bar_heights": [], "logits_hist_data_bar_values": [],
        "n_prompts_total": meta["n_prompts_total"], "n_tokens_in_prompt": meta["n_tokens_in_prompt"],
        "dataset": meta["dataset"], "decoder_weights_dist": [], "activations": acts,
    }


def export_neuronpedia(run_dir: str | Path, *, batch_size: int = 128, model_id: str | None = None) -> Path:
    """Write ``run_dir/neuronpedia/`` (see the module doc) and return the path of its ``index.json``."""
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size} must be >= 1")
    run = load_run(run_dir)
    root = run.path
    if not is_exported(root):
        export_run(root)
    src = read_run_config(root).get("source") or {}
    manifest = root / "activations" / "manifest.json"
    store = json.loads(manifest.read_text(encoding="utf-8")) if manifest.is_file() else {}
    meta = {"n_prompts_total": int(store.get("num_inputs", 0) or 0),
            "n_tokens_in_prompt": int(store.get("max_length", 0) or 0),
            "dataset": str((store.get("metadata") or {}).get("description") or src.get("name", ""))}
    model = model_id or str(src.get("name") or root.name)
    unit_index = {n: i for i, n in enumerate(run.unit_names)}
    out = root / "neuronpedia"
    index = {"format": "Neuronpedia feature dashboards (SAEDashboard batch files)", "model_id": model,
             "unit_names_level0": run.unit_names, "levels": []}
    for level in run.levels:
        stem = f"level_{level.index:03d}"
        side = json.loads((root / "feature_maps" / f"{stem}.json").read_text(encoding="utf-8"))
        examples = run.examples(level.index) or {}
        tops, bottoms = examples.get("variables", []), examples.get("bottom", [])
        l1 = np.asarray(abs(run.feature_map_sparse(level.index)).sum(axis=0)).ravel()
        n = int(sum((side["variables"][0].get("histogram") or {}).get("counts", []))) if side["variables"] else 0
        feats = [_feature(var, tops[v] if v < len(tops) else [], bottoms[v] if v < len(bottoms) else [],
                          float(l1[v]), unit_index, n, meta) for v, var in enumerate(side["variables"])]
        files = []
        for k in range(0, len(feats), batch_size):
            name = f"{stem}/batch-{k // batch_size}.json"
            write_json(out / name, {"model_id": model, "layer": level.index, "sae_set": f"rsmi-{stem}",
                                    "features": feats[k : k + batch_size]}, indent=None)
            files.append(name)
        index["levels"].append({
            "level": level.index, "sae_set": f"rsmi-{stem}", "files": files,
            "features": [{"feature_index": var["variable"], "block": var["block"], "mi": var["mi"],
                          "mi_stderr": var.get("mi_stderr"), "parents": var.get("parents", []),
                          "children": var.get("children", [])} for var in side["variables"]]})
    return write_json(out / "index.json", index, indent=None)
