"""Which samples two runs' coarse variables are correlated on: the rule of variable matching.

Matching needs both runs' coarse variables on the *same* samples. In order:

1. ``samples`` given (``[N, U_0]`` level-0 activations, or a file of them): both runs must have the
   same level-0 units (names, in order); each run encodes them with its own filters
   (:meth:`Run.encode`). Rule ``"given"``.
2. Both runs recorded the same inputs: their activation stores (``RUN/activations``, or the
   ``store:<dir>`` a run was made from) hold equal inputs and the same sample rows (``input_index``
   and, for text, ``token_position``); or, without stores, the flows' level-0 data have the same
   fingerprint (``flow_config.json``). Each level's saved coarse samples are then the two runs'
   variables on the same samples — whatever their units, so two models of different width recorded
   on the same inputs are matched too. Rule ``"same-inputs"``.
3. The same level-0 units but different inputs (e.g. two halves of a corpus): the concatenation of
   both runs' recorded level-0 samples, encoded by each run's filters. Rule ``"same-units"``.
4. Otherwise matching is not defined (different units and no shared inputs): the reason is
   returned and the comparison keeps GW distances and invariants only.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch

__all__ = ["SharedSamples", "run_store", "shared_coarse_samples"]

log = logging.getLogger(__name__)


@dataclass
class SharedSamples:
    """Both runs' coarse variables on shared samples, level by level, or why there are none.

    ``rule``: ``"given"``, ``"same-inputs"``, ``"same-units"`` or ``None``; ``coarse[l]`` is
    ``(H_a [N, J_a], H_b [N, J_b])`` for the levels both runs have; ``n_samples``; ``note`` says
    which samples were used or why matching is not defined.
    """

    rule: str | None
    note: str
    coarse: list[tuple[torch.Tensor, torch.Tensor]]
    n_samples: int = 0


def run_store(run):
    """The activation store a run's level-0 samples came from, or None (``activations/`` or ``store:<dir>``)."""
    from graphs import ActivationStore

    own = Path(run.path) / "activations"
    if (own / "manifest.json").is_file():
        return ActivationStore.open(own)
    from rsmi_nn.app.config import read_run_config

    try:
        name = str(read_run_config(run.path).get("source", {}).get("name", ""))
    except (FileNotFoundError, ValueError):
        return None
    if name.startswith("store:") and (Path(name[len("store:"):]) / "manifest.json").is_file():
        return ActivationStore.open(name[len("store:"):])
    return None


def shared_coarse_samples(run_a, run_b, samples=None) -> SharedSamples:
    """Both runs' coarse variables on shared samples by the module's rule (1 to 4, in order)."""
    levels = min(len(run_a.levels), len(run_b.levels))
    same_units = run_a.unit_names == run_b.unit_names
    if samples is not None:
        x = _given_samples(samples)
        if not same_units:
            raise ValueError(f"samples were given but the runs have different level-0 units ({run_a.num_units} vs "
                             f"{run_b.num_units}, or other names); matching on given samples needs runs of the same "
                             "model and units")
        return _encoded("given", f"{len(x)} given level-0 samples, encoded by each run's filters", run_a, run_b, x)
    store_a, store_b = run_store(run_a), run_store(run_b)
    if _same_inputs(run_a, run_b, store_a, store_b):
        coarse = [(run_a.levels[i].coarse_samples(), run_b.levels[i].coarse_samples()) for i in range(levels)]
        n = int(coarse[0][0].shape[0]) if coarse else 0
        return SharedSamples("same-inputs", f"both runs recorded the same {n} samples; their saved coarse samples "
                             "are compared", coarse, n)
    if same_units and store_a is not None and store_b is not None:
        names = run_a.unit_names
        x = torch.cat([store_a.to_tensor(units=names), store_b.to_tensor(units=names)])
        return _encoded("same-units", f"the runs recorded different inputs; both runs' {len(x)} level-0 samples "
                        "(concatenated) are encoded by each run's filters", run_a, run_b, x)
    why = "different level-0 units" if not same_units else "the same units but no recorded level-0 samples"
    note = (f"matching is not defined: the runs have {why} ({run_a.num_units} vs {run_b.num_units} units) and did "
            "not record the same inputs; GW distances and invariants are still compared (pass samples= for runs "
            "of the same units)")
    log.warning("%s vs %s: %s", run_a.path, run_b.path, note)
    return SharedSamples(None, note, [])


def _given_samples(samples) -> torch.Tensor:
    from estimators.validation import check_samples

    if isinstance(samples, (str, Path)):
        from graphs.tensor_files import load_samples

        samples = load_samples(samples)
    return check_samples(torch.as_tensor(samples), name="samples", min_samples=3, allow_constant=True)


def _encoded(rule: str, note: str, run_a, run_b, x: torch.Tensor) -> SharedSamples:
    enc_a, enc_b = run_a.encode(x), run_b.encode(x)
    return SharedSamples(rule, note, list(zip(enc_a, enc_b)), int(x.shape[0]))


def _same_inputs(run_a, run_b, store_a, store_b) -> bool:
    """Whether both runs' level-0 samples are the same rows of the same inputs (rule 2)."""
    if store_a is not None and store_b is not None:
        if store_a.num_samples != store_b.num_samples:
            return False
        try:
            ins_a, ins_b = store_a.inputs(), store_b.inputs()
        except (ValueError, FileNotFoundError):
            return False
        if type(ins_a) is not type(ins_b):
            return False
        same = torch.equal(ins_a, ins_b) if isinstance(ins_a, torch.Tensor) else ins_a == ins_b
        if not same:
            return False
        rows = range(store_a.num_samples)
        info_a, info_b = store_a.sample_info(rows), store_b.sample_info(rows)
        keys = [k for k in ("input_index", "token_position") if k in info_a or k in info_b]
        return all(k in info_a and k in info_b and torch.equal(info_a[k], info_b[k]) for k in keys)
    if store_a is None and store_b is None:
        fa, fb = run_a.config.get("data"), run_b.config.get("data")
        return fa is not None and fa == fb and run_a.unit_names == run_b.unit_names
    return False
