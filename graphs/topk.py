"""Running top-k of a symmetric score matrix seen one row band at a time.

The score matrix ``S`` (``U × U``, symmetric, e.g. correlations) is never held whole:
a caller hands in bands ``S[r0:r1, r0:]`` (the upper triangle including the diagonal
block), and :class:`RunningTopK` keeps, for every row, the ``k`` largest scores seen so
far and their column ids. Each band updates its own rows (from the band's rows) and the
rows ``r1..U-1`` (from the band's columns, by symmetry), so every pair is scored once.
"""

from __future__ import annotations

import torch

__all__ = ["RunningTopK"]


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
        top, pos = v.topk(self.k, dim=1)
        self.values[rows] = top
        self.indices[rows] = i.gather(1, pos)

    def update(self, band: torch.Tensor, r0: int) -> None:
        """Fold in ``band = S[r0:r0+t, r0:]`` (scores, larger is stronger; the diagonal is ignored).

        ``band`` is modified in place (its diagonal is set to ``-inf``).
        """
        t, width = band.shape
        r1 = r0 + t
        if width != self.num_rows - r0 or r1 > self.num_rows:
            raise ValueError(f"band of shape {tuple(band.shape)} at row {r0} does not fit a {self.num_rows}-row matrix")
        band.diagonal()[:].fill_(-torch.inf)
        v, i = band.topk(min(self.k, width), dim=1)
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
        v, i = block.topk(min(self.k, block.shape[0]), dim=0)
        self._merge(slice(j0, j0 + block.shape[1]), v.T, i.T + r0)

    def edges(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(rows, cols, values)`` of every finite kept entry, on the CPU."""
        rows = torch.arange(self.num_rows, device=self.values.device).unsqueeze(1).expand_as(self.indices)
        keep = torch.isfinite(self.values) & (self.indices >= 0)
        return rows[keep].cpu(), self.indices[keep].cpu(), self.values[keep].cpu()
