"""Co-occurrence graphs from activations: streaming moments, then a tile-wise top-k pass.

``build_graph`` makes two passes over the samples (an in-memory array, or an
``ActivationStore``'s shards streamed from disk) and never forms a dense ``U × U`` matrix:

1. **Moments** (:class:`graphs.moments.ShiftedSums`, float64): count, mean and variance of
   every unit from sums of deviations from the first sample, in cache-sized pieces. Constant
   units are excluded (a warning lists them). When the transformed copy fits the budget, this
   same pass stores the values as a float32 ``Z [N, U]`` (a float64 input minus its first
   sample, for precision): the data is read once. A NaN/Inf makes a unit's sum non-finite,
   which is how it is found (no separate validation pass).
2. **Products**, one row band ``[r0:r1, r0:U]`` at a time (the upper triangle; by symmetry
   each band also updates the rows below it). The units are transformed once — standardised
   ``z = (x - mean) / (std √N)`` for correlations, ``1[x > threshold]`` for co-firing — so a
   band is a single float32 matrix product: either ``Z[:, r0:r1]ᵀ Z[:, r0:]`` of the resident
   copy (when it fits the memory budget) or accumulated over sample batches (one more pass
   over the data per band). :class:`graphs.topk.RunningTopK` keeps each row's ``k`` best
   partners (ties: the smaller column id).

Inside an initialised ``torch.distributed`` process group (:mod:`graphs.distributed`, e.g. under
``torchrun``) every rank makes the moments pass itself and computes its share of the bands (balanced
by area, :func:`graphs.distributed.band_owners`); the partial top-k lists are all-gathered and merged.
Every band is the same product on whichever rank computes it and ties are broken canonically, so every
rank returns the graph of one process, byte for byte.

Memory (bytes, float32): ``4·N·U`` for the resident copy when used, ``4·t·U`` for a band of
``t`` rows, ``~12·U·k`` for the running top-k, plus one batch. ``memory_budget`` bounds the
sum; the band height ``t`` is derived from it (``tile_size`` overrides). The input array
itself is not counted. FLOPs: about ``N·U²`` (half the dense ``2·N·U²``, by symmetry).

Edge metrics (weights; an edge's weight is the metric of its pair):
``"corr"`` ``|ρ|``; ``"gaussian_mi"`` ``-½·log(1 - ρ²)`` in nats (same neighbours as
``"corr"``); ``"pmi"`` ``log(p_ij / (p_i p_j))`` in nats for units binarised at ``threshold``
(default: each unit's mean), neighbours ranked by PMI, pairs that never co-fire get no edge.
"""

from __future__ import annotations

import logging
import math

import numpy as np
import torch

from estimators.device import resolve_device, small_pages
from estimators.validation import as_tensor, check_choice, check_positive_int, check_samples
from graphs.distributed import agreed, all_gather_objects, all_gather_tensors, band_owners, broadcast_object, is_active, rank
from graphs.graph import ActivationGraph
from graphs.moments import ShiftedSums
from graphs.sample_batches import SampleBatches
from graphs.topk import RunningTopK
from graphs.unit_transform import UnitTransform, pmi_inplace, transform_resident

__all__ = ["METRICS", "build_graph", "plan_bands"]

log = logging.getLogger(__name__)

METRICS = ("corr", "pmi", "gaussian_mi")
DEFAULT_MEMORY_BUDGET = 2 * 2**30
# element-wise passes work on pieces of this many elements: ~2 MiB of float64 stays in a CPU's cache; a GPU
# wants large launches (and each piece's NaN check is a host sync)
CHUNK_ELEMENTS = {"cpu": 2**18, "cuda": 2**24}


def plan_bands(num_samples: int, num_units: int, k: int, memory_budget: int, batch_rows: int,
               tile_size: int | None = None) -> dict:
    """Choose resident-or-streamed mode and the band height ``t`` from the memory budget (bytes)."""
    state = 3 * 12 * num_units * k  # running top-k values + indices, and the merge temporaries
    batch = batch_rows * num_units * (8 + 8 + 4)  # a float64 chunk, its deviations, the float32 result
    resident = 4 * num_samples * num_units
    per_row = 4 * num_units + 16 * min(num_units, 2048) + 40 * k  # band row, one column chunk's candidates, top-k outputs
    free = memory_budget - state - batch
    mode = "resident" if free - resident >= per_row * min(num_units, 64) else "streamed"
    avail = free - (resident if mode == "resident" else 0)
    rows = tile_size if tile_size is not None else avail // per_row
    if rows < 1:
        need = state + batch + per_row
        raise ValueError(f"memory_budget={memory_budget} bytes is too small for U={num_units} units and k={k}; "
                         f"pass memory_budget >= {need}")
    if tile_size is None:  # ~16 bands: the upper triangle then costs N·U²·(1 + 1/bands) FLOPs
        rows = min(rows, max(256, math.ceil(num_units / 8)))
    rows = int(min(rows, num_units))
    num_bands = math.ceil(num_units / rows)
    est = state + batch + rows * per_row + (resident if mode == "resident" else 0)
    return {"mode": mode, "band_rows": rows, "num_bands": num_bands, "batch_rows": batch_rows,
            "estimated_bytes": int(est), "data_passes": 1 if mode == "resident" else 1 + num_bands}


def build_graph(
    x,
    k: int = 16,
    metric: str = "corr",
    *,
    names=None,
    threshold=None,
    tile_size: int | None = None,
    memory_budget: int | None = None,
    device="auto",
    progress: bool = False,
) -> ActivationGraph:
    """Sparse top-k co-occurrence graph of the units (columns) of ``x``.

    Parameters
    ----------
    x : Tensor or ndarray of shape (n_samples, n_units), or an ``ActivationStore``
        Activations; a store is streamed shard by shard (``iter_batches``).
    k : int
        Strongest partners kept per unit; the graph is the union of both directions, so
        every node's ``k`` strongest partners are among its edges (degree >= k).
    metric : {"corr", "pmi", "gaussian_mi"}
        Edge weight: ``|ρ|``; co-firing PMI (nats); ``-½ log(1 - ρ²)`` (nats).
    names : list of str, optional
        Unit names (default: the store's names, else ``unit:<i>``).
    threshold : float or array of shape (n_units,), optional
        Firing threshold for ``metric="pmi"`` (default: each unit's mean).
    tile_size : int, optional
        Rows per band (overrides the height derived from ``memory_budget``).
    memory_budget : int, optional
        Bytes of working memory (resident copy, band, top-k state, one batch; not the input).
        Default: 2 GiB on the CPU; on CUDA half of the GPU memory free at the call.
    device : "auto", "cpu", "cuda", ...
    progress : bool
        Show a tqdm bar over bands.

    Returns
    -------
    ActivationGraph whose nodes are the non-constant units (in column order; constant units,
    and for PMI units that never or always fire, are excluded with a warning and listed in
    ``metadata["excluded_units"]``/``["excluded_names"]``; ``metadata["unit_index"]`` gives each
    node's column in ``x``).
    """
    if memory_budget is None and is_active():  # free GPU memory differs between ranks: all plan with the least
        memory_budget = min(all_gather_objects(_memory_budget(None, resolve_device(device))))
    with agreed("build_graph"):  # local work; a rank that fails here makes every rank fail
        topk, src, kept, counts, k_eff, n, plan = _local_bands(x, k, metric, names, threshold, tile_size,
                                                               memory_budget, device, progress)
    if is_active():  # each rank saw its own bands: merge the partial top-k lists (same on every rank)
        _merge_ranks(topk, counts, metric, plan)
    return _assemble(topk, src, kept, counts, metric, k_eff, n, plan, threshold)


def _local_bands(x, k, metric, names, threshold, tile_size, memory_budget, device, progress):
    """Checks, the moments pass and this rank's bands (all of them in one process), into a running top-k."""
    metric = check_choice(metric, METRICS, name="metric")
    k = check_positive_int(k, name="k")
    dev = resolve_device(device)
    memory_budget = _memory_budget(memory_budget, dev)
    if tile_size is not None:
        tile_size = check_positive_int(tile_size, name="tile_size")
    if threshold is not None and metric != "pmi":
        raise ValueError(f"threshold applies to metric='pmi' only, got metric={metric!r}; drop threshold")
    src = SampleBatches(x, names)
    n, u = src.num_samples, src.num_units
    if n < 2:
        raise ValueError(f"x has {n} samples but at least 2 are needed; pass more samples")
    if u < 2:
        raise ValueError(f"x has {u} unit(s) (columns) but a graph needs at least 2; pass samples [n_samples, n_units]")
    batch_rows = int(max(1, min(n, min(64 * 2**20, memory_budget // 8) // (20 * u))))
    chunk_rows = max(1, CHUNK_ELEMENTS.get(dev.type, 2**18) // u)
    plan = plan_bands(n, u, min(k, u - 1) if u > 1 else 1, memory_budget, batch_rows, tile_size)
    sums, z, offset = _moments_pass(src, batch_rows, chunk_rows, dev, resident=plan["mode"] == "resident")
    kept = _varying_units(sums, src.names)
    uk = kept.numel()
    k_eff = min(k, uk - 1)
    if k_eff < k:
        log.info("k=%d exceeds the %d other non-constant units; keeping all pairs (k=%d)", k, uk - 1, k_eff)
    transform = UnitTransform.fit(metric, sums, offset, kept.to(dev), threshold)
    log.info("build_graph: U=%d N=%d metric=%s k=%d plan=%s", uk, n, metric, k_eff, plan)
    topk = RunningTopK(uk, k_eff, dev)
    counts = torch.zeros(uk, dtype=torch.float64, device=dev)  # firings per unit (PMI)
    if z is not None:
        z = transform_resident(z, transform, offset, counts, chunk_rows)
    _band_pass(topk, z, src, transform, counts, plan, progress)
    del z
    return topk, src, kept, counts, k_eff, n, plan


def _merge_ranks(topk: RunningTopK, counts: torch.Tensor, metric: str, plan: dict) -> None:
    """Merge every rank's running top-k into ``topk`` (in rank order; ties are canonical, so any order gives
    the same lists) and, for a streamed PMI graph, take the firing counts of the rank that owns band 0."""
    values, indices = all_gather_tensors(topk.values), all_gather_tensors(topk.indices)
    for r, (v, i) in enumerate(zip(values, indices)):
        if r != rank():
            topk.merge(v, i)
    if metric == "pmi" and plan["mode"] == "streamed":
        counts.copy_(broadcast_object(counts.cpu(), src=_band_ranks(topk.num_rows, plan["band_rows"])[0]))


def _memory_budget(memory_budget: int | None, dev: torch.device) -> int:
    """The working-memory budget in bytes: the given one, else 2 GiB (CPU) or half the free GPU memory."""
    if memory_budget is None:
        memory_budget = DEFAULT_MEMORY_BUDGET
        if dev.type == "cuda":
            memory_budget = int(torch.cuda.mem_get_info(dev)[0] // 2)
    return check_positive_int(memory_budget, name="memory_budget")


def _moments_pass(src: SampleBatches, batch_rows: int, chunk_rows: int, dev: torch.device, *, resident: bool):
    """Pass 1: per-unit sums and, when ``resident``, the float32 copy ``z [N, U]``.

    Returns ``(sums, z or None, offset)``: a float64 input is shifted by its first sample
    (``offset [U]``, for precision), any other dtype by zero.
    """
    n, u = src.num_samples, src.num_units
    sums = ShiftedSums(u, device=dev)
    z = small_pages(torch.empty(n, u, dtype=torch.float32, device=dev)) if resident else None  # written once
    offset = None
    for start, batch in src.batches(batch_rows):
        if batch.ndim != 2 or batch.shape[1] != u or start + batch.shape[0] > n:
            raise ValueError(f"batch at row {start} has shape {tuple(batch.shape)}, expected (b, {u}) within "
                             f"{n} samples; the store is inconsistent, re-record it")
        for a in range(0, batch.shape[0], chunk_rows):
            row = start + a
            part = as_tensor(batch[a : a + chunk_rows], name=f"x[{row}:]", dtype=batch.dtype
                             if batch.dtype.is_floating_point else torch.float32, device=dev)
            if offset is None:
                wide = part.dtype == torch.float64
                offset = part[0].clone() if wide else torch.zeros(u, dtype=torch.float64, device=dev)
            vals = (part - offset).float() if wide else part
            if z is not None:
                vals = z[row : row + part.shape[0]].copy_(vals)
            if not bool(torch.isfinite(sums.update(vals)).all()):
                _raise_non_finite(part, row)
    if sums.count != n:
        raise ValueError(f"x yielded {sums.count} samples but reports num_samples={n}; re-record the store")
    return sums, z, offset


def _varying_units(sums: ShiftedSums, names: list[str]) -> torch.Tensor:
    """LongTensor of the columns that vary (constant ones are excluded with a warning); at least 2."""
    u = len(names)
    const = sums.constant_units().cpu()
    keep = torch.ones(u, dtype=torch.bool)
    keep[const] = False
    _warn_excluded(const, names, "constant (zero variance)")
    kept = keep.nonzero().flatten()
    if kept.numel() < 2:
        raise ValueError(f"only {kept.numel()} of {u} units vary across the samples; "
                         "a graph needs at least 2 non-constant units")
    return kept


def _band_pass(topk: RunningTopK, z: torch.Tensor | None, src: SampleBatches, transform: UnitTransform,
               counts: torch.Tensor, plan: dict, progress: bool) -> None:
    """Pass 2: each band's products ``Zᵀ Z`` (resident ``z``, or streamed batches), weighted, into ``topk``."""
    uk, n, dev = transform.kept.numel(), src.num_samples, transform.kept.device
    rows = plan["band_rows"]
    buf = torch.empty(rows * uk, dtype=torch.float32, device=dev)
    owners = _band_ranks(uk, rows)
    bands = [r0 for r0, owner in zip(range(0, uk, rows), owners) if owner == rank()]  # all of them in one process
    if progress:
        from tqdm.auto import tqdm

        bands = tqdm(bands, desc="graph bands", unit="band")
    for i, r0 in enumerate(bands):
        r1 = min(r0 + rows, uk)
        band = buf[: (r1 - r0) * (uk - r0)].view(r1 - r0, uk - r0)
        if z is not None:
            torch.mm(z[:, r0:r1].T, z[:, r0:], out=band)
        else:
            _streamed_band(band, src, transform, r0, r1, plan["batch_rows"], counts if i == 0 else None)
        if transform.scale is None:
            pmi_inplace(band, counts, r0, n)
        else:
            band.abs_()
        topk.update(band, r0)


def _band_ranks(num_units: int, band_rows: int) -> list[int]:
    """The rank that computes each row band (all 0 in one process): balanced by the band's area."""
    return band_owners([(min(r0 + band_rows, num_units) - r0) * (num_units - r0)
                        for r0 in range(0, num_units, band_rows)])


def _streamed_band(band: torch.Tensor, src: SampleBatches, transform: UnitTransform, r0: int, r1: int,
                   batch_rows: int, counts: torch.Tensor | None) -> None:
    """Accumulate ``band = Z[:, r0:r1]ᵀ Z[:, r0:]`` over one more pass of sample batches.

    With ``counts`` (the first band of a PMI graph) the pass also adds up the firings per unit.
    """
    band.zero_()
    for _, batch in src.batches(batch_rows):
        b = batch.to(band.device)
        zb = transform(transform.select(b).to(torch.float64, copy=True), transform.centre)
        band.addmm_(zb[:, r0:r1].T, zb[:, r0:])
        if counts is not None and transform.scale is None:
            counts += zb.sum(0, dtype=torch.float64)


def _raise_non_finite(part: torch.Tensor, row: int) -> None:
    """Name the first NaN/Inf of ``part`` (rows ``row...`` of x), or say the values overflow float32."""
    check_samples(part, name=f"x[{row}:{row + part.shape[0]}]", min_samples=1, allow_constant=True,
                  dtype=part.dtype)
    raise ValueError(f"x[{row}:{row + part.shape[0]}] has values whose distance from the first sample "
                     "exceeds float32's range (3.4e38); rescale the activations")


def _warn_excluded(units: torch.Tensor, names: list[str], why: str) -> None:
    if units.numel():
        shown = ", ".join(names[i] for i in units[:20].tolist()) + (" ..." if units.numel() > 20 else "")
        log.warning("build_graph excludes %d %s unit(s) from the graph: %s", units.numel(), why, shown)


def _assemble(topk, src, kept, counts, metric, k, n, plan, threshold) -> ActivationGraph:
    rows, cols, vals = topk.edges()
    node = torch.ones(kept.numel(), dtype=torch.bool)
    if metric == "pmi":
        degenerate = ((counts <= 0) | (counts >= n)).cpu()
        _warn_excluded(kept[degenerate], src.names, "never- or always-firing (at the PMI threshold)")
        node &= ~degenerate
    new_id = torch.cumsum(node.long(), 0) - 1
    ok = node[rows] & node[cols]
    rows, cols, vals = new_id[rows[ok]], new_id[cols[ok]], vals[ok]
    if metric == "gaussian_mi":
        rho2 = vals.double().clamp(max=1.0 - 1e-12).square()
        vals = (-0.5 * torch.log1p(-rho2)).float()
    unit_index = kept[node]
    excluded = torch.ones(src.num_units, dtype=torch.bool)
    excluded[unit_index] = False
    excluded = excluded.nonzero().flatten().tolist()
    if threshold is None:
        thr_meta = "mean" if metric == "pmi" else None
    else:
        arr = np.asarray(threshold.cpu() if isinstance(threshold, torch.Tensor) else threshold, dtype=float)
        thr_meta = float(arr.reshape(-1)[0]) if arr.size == 1 else "per-unit"
    meta = {"metric": metric, "k": k, "num_samples": n, "num_input_units": src.num_units,
            "excluded_units": excluded, "excluded_names": [src.names[i] for i in excluded],
            "unit_index": unit_index.tolist(), "threshold": thr_meta,
            "plan": {key: plan[key] for key in ("mode", "band_rows", "num_bands", "estimated_bytes")}}
    names = [src.names[i] for i in unit_index.tolist()]
    return ActivationGraph(names, torch.stack([rows, cols]), vals, meta)
