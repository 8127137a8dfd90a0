"""Running top-k of a symmetric score matrix seen one row band at a time.

The score matrix ``S`` (``U × U``, symmetric, e.g. correlations) is never held whole:
a caller hands in bands ``S[r0:r1, r0:]`` (the upper triangle including the diagonal
block), and :class:`RunningTopK` keeps, for every row, the ``k`` largest scores seen so
far and their column ids. Each band updates its own rows (from the band's rows) and the
rows ``r1..U-1`` (from the band's columns, by symmetry), so every pair is scored once.

Ties are broken canonically (:func:`top_k`): among equal scores the smaller column id wins, so the
kept lists are the top-k of all candidates in the order (score descending, id ascending), whatever
order the bands came in, and partial lists merge exactly (:meth:`RunningTopK.merge`: the bands of a
graph built by several ranks).
"""

from __future__ import annotations

import torch

__all__ = ["RunningTopK", "top_k"]


def _count_equal(values: torch.Tensor, kth: torch.Tensor, chunk_elements: int = 2**24) -> torch.Tensor:
    """``[r]``: how many entries of each row of ``values [r, c]`` equal its ``kth [r, 1]``, in row chunks (a
    whole-band comparison summed at once took 8 bytes per band entry: 84 GiB for a U = 300 000 band on CUDA)."""
    counts = torch.empty(values.shape[0], dtype=torch.long, device=values.device)
    step = max(1, chunk_elements // max(values.shape[1], 1))
    for a in range(0, values.shape[0], step):
        counts[a:a + step] = torch.count_nonzero(values[a:a + step] == kth[a:a + step], dim=1)
    return counts


def top_k(values: torch.Tensor, k: int, index: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row ``k`` largest of ``values [r, c]`` with their ids (``index [r, c]``, default the column positions).

    Ties at the k-th value are broken by the smaller id, so the result is the same whatever the column order
    (``torch.topk`` alone leaves that choice to the kernel). Returns ``(top [r, k], ids [r, k])`` sorted by
    value, descending. Rows whose k-th value is ``-inf`` are left to ``topk`` (those entries are never edges).
    Ids must be unique within a row; equal values come in the order of their ids.
    """
    top, pos = values.topk(k, dim=1)
    ids = pos if index is None else index.gather(1, pos)
    kth = top[:, -1:]
    tied = (_count_equal(values, kth) > (top == kth).sum(1)) & torch.isfinite(kth[:, 0])
    if bool(tied.any()):  # equal candidates were left out: keep those of the smaller ids
        rows = tied.nonzero().flatten()
        v, kt = values[rows], kth[rows]
        ind = torch.arange(v.shape[1], device=v.device).expand_as(v) if index is None else index[rows]
        greater, equal = v > kt, v == kt
        need = k - greater.sum(1, keepdim=True)  # >= 1: the k-th value itself is tied
        smallest = torch.where(equal, ind, torch.iinfo(torch.long).max).topk(k, dim=1, largest=False).values
        chosen = greater | (equal & (ind <= smallest.gather(1, need - 1)))
        top[rows], ids[rows] = v[chosen].view(-1, k), ind[chosen].view(-1, k)
    by_id = ids.argsort(dim=1, stable=True)  # the canonical order: value descending, then id ascending
    top, ids = top.gather(1, by_id), ids.gather(1, by_id)
    by_value = top.argsort(dim=1, descending=True, stable=True)
    return top.gather(1, by_value), ids.gather(1, by_value)


class RunningTopK:
    """Per-row top-``k`` of a symmetric ``[U, U]`` score matrix fed as upper-triangular row bands.

    Parameters
    ----------
    num_rows : int
        ``U``.
    k : int
        Partners kept per row (``<= U - 1``).
    device : torch.device
    column_chunk : int
        Columns transposed at a time when a band's columns update rows below it.
    """

    def __init__(self, num_rows: int, k: int, device, column_chunk: int = 2048):
        self.num_rows, self.k = num_rows, k
        self.values = torch.full((num_rows, k), -torch.inf, device=device)
        self.indices = torch.full((num_rows, k), -1, dtype=torch.long, device=device)
        self.column_chunk = column_chunk

    def _merge(self, rows, values: torch.Tensor, indices: torch.Tensor) -> None:
        v = torch.cat([self.values[rows], values], dim=1)
        i = torch.cat([self.indices[rows], indices], dim=1)
        self.values[rows], self.indices[rows] = top_k(v, self.k, i)

    def merge(self, values: torch.Tensor, indices: torch.Tensor) -> None:
        """Fold in another running top-k of the same matrix (``[U, k]`` each) that saw other bands."""
        if values.shape != self.values.shape or indices.shape != self.indices.shape:
            raise ValueError(f"cannot merge top-k lists of shape {tuple(values.shape)} into {tuple(self.values.shape)}")
        self._merge(slice(0, self.num_rows), values.to(self.values.device), indices.to(self.indices.device))

    def update(self, band: torch.Tensor, r0: int) -> None:
        """Fold in ``band = S[r0:r0+t, r0:]`` (scores, larger is stronger; the diagonal is ignored).

        ``band`` is modified in place (its diagonal is set to ``-inf``).
        """
        t, width = band.shape
        r1 = r0 + t
        if width != self.num_rows - r0 or r1 > self.num_rows:
            raise ValueError(f"band of shape {tuple(band.shape)} at row {r0} does not fit a {self.num_rows}-row matrix")
        band.diagonal()[:].fill_(-torch.inf)
        v, i = top_k(band, min(self.k, width))
        self._merge(slice(r0, r1), v, i + r0)
        for c0 in range(t, width, self.column_chunk):
            c1 = min(c0 + self.column_chunk, width)
            self._update_columns(band[:, c0:c1], r0, r0 + c0)

    def _update_columns(self, block: torch.Tensor, r0: int, j0: int) -> None:
        """Rows ``j0..j0+w`` take candidates from the columns of ``block = S[r0:r0+t, j0:j0+w]``.

        Only entries at or above a row's current k-th best can enter its top-k, so a comparison
        leaves a few candidates per row, merged sparsely. A row with free slots (first band) has
        no k-th best yet; it gets a lower bound instead: the k-th largest of the maxima of ``4k``
        disjoint groups of the column's entries is at most the column's k-th largest entry.
        """
        t, w = block.shape
        kth = self.values[j0 : j0 + w, -1]
        if not bool(torch.isfinite(kth).all()):
            if t <= 2 * self.k:
                self._dense_columns(block, r0, j0)
                return
            groups = min(t, 4 * self.k)
            g = t // groups
            maxima = block[: g * groups].unflatten(0, (groups, g)).amax(1)
            kth = torch.maximum(kth, maxima.topk(self.k, dim=0).values[-1])
        hits = (block >= kth).nonzero()  # (row, column) pairs
        m = hits.shape[0]
        if m == 0:
            return
        if 4 * m > t * w:  # most entries pass: dense is cheaper
            self._dense_columns(block, r0, j0)
            return
        src, col = hits.unbind(1)
        order = torch.argsort(col, stable=True)  # group by column (a transposed nonzero is ~3x slower)
        src, col = src[order], col[order]
        counts = torch.bincount(col, minlength=w)
        cols = counts.nonzero().flatten()
        slot = torch.full((w,), -1, dtype=torch.long, device=block.device)
        slot[cols] = torch.arange(cols.numel(), device=block.device)
        rank = torch.arange(m, device=block.device) - (torch.cumsum(counts, 0) - counts)[col]
        width = int(counts.max())
        cand_v = torch.full((cols.numel(), width), -torch.inf, device=block.device)
        cand_i = torch.full((cols.numel(), width), -1, dtype=torch.long, device=block.device)
        cand_v[slot[col], rank] = block[src, col]
        cand_i[slot[col], rank] = src + r0
        self._merge(cols + j0, cand_v, cand_i)

    def _dense_columns(self, block: torch.Tensor, r0: int, j0: int) -> None:
        v, i = top_k(block.T, min(self.k, block.shape[0]))
        self._merge(slice(j0, j0 + block.shape[1]), v, i + r0)

    def edges(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(rows, cols, values)`` of every finite kept entry, on the CPU."""
        rows = torch.arange(self.num_rows, device=self.values.device).unsqueeze(1).expand_as(self.indices)
        keep = torch.isfinite(self.values) & (self.indices >= 0)
        return rows[keep].cpu(), self.indices[keep].cpu(), self.values[keep].cpu()
