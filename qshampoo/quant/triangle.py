"""The strict lower triangle of square matrices, stored tile by tile (the ``"tril"`` layout).

Chunks (one fp32 absmax scale each) are segments of one row: row ``i``'s entries ``j < i`` are
cut at multiples of ``block_size`` ``s``, the last segment shorter. Cut the matrix into
``s x s`` tiles and the chunks line up with the tiles: every row of an off-diagonal tile is a
whole chunk, and every row of a diagonal tile's strict lower part is one (shorter) chunk.

For ``n = (k-1) s + t`` (``1 <= t <= s``, ``k`` tile rows) the entries are stored in four
parts, each a dense stack of whole chunks:

    A  the off-diagonal tiles (p, q) with 1 <= p <= k-2, q < p (row-major over the tile grid),
       each s x s, row-major inside: one chunk per tile row
    B  the last tile row: rows (k-1)s .. n-1, columns 0 .. (k-1)s - 1, t rows of k-1 chunks
    C  the strict lower parts of the diagonal tiles 0 .. k-2 (row-major, rows 1 .. s-1)
    D  the strict lower part of the last diagonal tile (order t)

Scales follow the same order (one per chunk: a tile row of A, a chunk of B, a row of C or D).
So encoding and decoding are a fixed number of tensor operations whatever ``n`` (a gather or
scatter over the tile grid, strided copies), and the only index tensors are the tile grid's
(``k^2 / 2`` entries) and one tile's (``s^2 / 2``), never ``n^2 / 2`` entries of the matrix.
Every chunk holds the same entries as when the triangle is stored row by row, so the codes and
scales are those of row-by-row storage, in another order.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import torch
from torch import Tensor

from .codebooks import nearest_codes

#: index sets kept per (size, device); a model has a handful of orders and one block size
_CACHE_SIZE = 32
_CACHE: dict[tuple, Tensor | tuple[Tensor, ...]] = {}
#: the tile indices of row strips (``decode_rows``), kept per (tile rows, strip, device): a
#: handful of strips for each root order of a model
_STRIP_CACHE_SIZE = 256
_STRIP_CACHE: dict[tuple, tuple] = {}
#: the off-diagonal tiles are encoded in pieces of at most ``k`` tiles (about ``n s`` entries,
#: as the other parts) and this many bytes (fp32): coding is elementwise and per chunk, so the
#: pieces give the codes of the whole, with temporaries of a piece's size (a few times it)
#: instead of the triangle's
PIECE_BYTES = 1 << 20
#: orders up to this are coded through index maps of the whole matrix instead (a gather each
#: way: about 10 operators per call where the tile path dispatches 30-100, whose overhead is
#: what small orders cost, docs/speed.md); the maps take about 14 n^2 bytes per order and
#: block size (under 1 MiB at 256), cached with the other index sets
MAP_MAX_ORDER = 256


def _cached(key: tuple, build, cache: dict = _CACHE, size: int = _CACHE_SIZE):
    value = cache.get(key)
    if value is None:
        if len(cache) >= size:
            del cache[next(iter(cache))]
        value = cache[key] = build()
    return value


def _tile_pairs(k: int, device: torch.device) -> tuple[Tensor, Tensor]:
    """Tile-grid coordinates ``(p, q)`` of part A, ``1 <= p <= k-2``, ``q < p``, row-major."""

    def build():
        p, q = torch.tril_indices(k - 1, k - 1, -1, device="cpu")
        return p.to(device), q.to(device)

    return _cached(("pairs", k, device), build)


def _tile_triangle(s: int, device: torch.device) -> tuple[Tensor, Tensor]:
    """For the strict lower part of an ``s x s`` tile in row-major order: each entry's flat
    position ``i * s + j`` and its chunk (row ``i``, numbered from 0 for row 1)."""

    def build():
        i, j = torch.tril_indices(s, s, -1, device="cpu")
        return (i * s + j).to(device), (i - 1).to(device)

    return _cached(("triangle", s, device), build)


def _strict_lower_mask(s: int, device: torch.device) -> Tensor:
    return _cached(("mask", s, device), lambda: torch.ones(s, s, device="cpu").tril_(-1).to(device))


@dataclass(frozen=True)
class TriangleLayout:
    """Where each chunk of the strict lower triangle of an ``n x n`` matrix is stored."""

    n: int
    s: int

    @cached_property
    def k(self) -> int:
        """Tile rows (the last one ``t`` rows high)."""
        return max(1, -(-self.n // self.s))

    @cached_property
    def t(self) -> int:
        return self.n - (self.k - 1) * self.s

    @cached_property
    def sizes(self) -> tuple[int, int, int, int]:
        """Entries of parts A, B, C, D."""
        k, s, t = self.k, self.s, self.t
        return (
            (k - 1) * (k - 2) // 2 * s * s,
            t * (k - 1) * s,
            (k - 1) * (s * (s - 1) // 2),
            t * (t - 1) // 2,
        )

    @cached_property
    def chunk_counts(self) -> tuple[int, int, int, int]:
        """Chunks (scales) of parts A, B, C, D."""
        k, s, t = self.k, self.s, self.t
        return (k - 1) * (k - 2) // 2 * s, t * (k - 1), (k - 1) * (s - 1), max(t - 1, 0)

    @property
    def numel(self) -> int:
        return self.n * (self.n - 1) // 2

    @property
    def num_chunks(self) -> int:
        return sum(self.chunk_counts)

    @property
    def mapped(self) -> bool:
        """Whether this order is coded through whole-matrix index maps (``MAP_MAX_ORDER``)."""
        return self.n <= MAP_MAX_ORDER

    def _maps(self, device: torch.device) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        """Index maps of the whole matrix (int32; ``N`` stored entries, ``c`` chunks), built by
        decoding the layout itself (so they agree with the tile path by construction):

        - ``symmetric`` ``(n n,)``: each entry's stored index, mirrored above the diagonal, and
          ``N`` (a zero appended to the values) on the diagonal;
        - ``lower`` ``(n n,)``: the same with ``N`` on and above the diagonal;
        - ``chunk`` ``(N,)``: each stored entry's chunk;
        - ``rows`` ``(c s,)``: chunk by chunk, the flat positions of its entries in storage order,
          a chunk shorter than ``s`` padded with its last entry again (an absmax is unchanged);
        - ``slots`` ``(N,)``: each stored entry's place in ``rows``.
        """

        def build():
            N, c, s = self.numel, self.num_chunks, self.s
            count = torch.arange(1, N + 1, dtype=torch.float64)  # exact: N < 2**53
            index = torch.zeros(1, self.n, self.n, dtype=torch.float64)
            ones = torch.ones(1, c, dtype=torch.float64)
            self._decode_tiles(lambda lo, hi: count[None, lo:hi].clone(), ones, index, True)
            symmetric = (index.view(-1).long() - 1).remainder_(N + 1)  # the diagonal: N
            lower = (
                symmetric.view(self.n, self.n)
                .clone()
                .masked_fill_(~torch.ones(self.n, self.n, dtype=torch.bool).tril_(-1), N)
                .view(-1)
            )
            where = torch.empty(N, dtype=torch.long)  # stored index -> flat position
            below = lower < N
            where[lower[below]] = torch.arange(self.n * self.n)[below]
            chunk_id = torch.zeros(1, self.n, self.n, dtype=torch.float64)
            chunk_no = torch.arange(1, c + 1, dtype=torch.float64)[None]
            self._decode_tiles(
                lambda lo, hi: torch.ones(1, hi - lo, dtype=torch.float64),
                chunk_no,
                chunk_id,
                False,
            )
            chunk = torch.empty(N, dtype=torch.long)
            chunk[lower[below]] = chunk_id.view(-1)[below].long() - 1
            # chunks are runs of consecutive stored entries (module docstring)
            lengths = torch.bincount(chunk, minlength=c)
            starts = torch.cumsum(lengths, 0) - lengths
            j = torch.arange(s)
            first_of = starts[:, None] + torch.minimum(j[None, :], (lengths - 1)[:, None])
            rows = where[first_of].view(-1)
            slots = chunk * s + (torch.arange(N) - starts[chunk])
            return tuple(
                m.to(torch.int32).to(device) for m in (symmetric, lower, chunk, rows, slots)
            )

        return _cached(("maps", self.n, self.s, device), build)

    def _split(self, x: Tensor, counts: tuple[int, ...]) -> list[Tensor]:
        return list(torch.split(x, list(counts), dim=-1))

    # -- the tile views of a batch of matrices ------------------------------------------------
    def _grid(self, X: Tensor) -> Tensor:
        """``(B, k-1, k-1, s, s)`` view of the first ``(k-1) s`` rows and columns' tiles."""
        b, r, c = X.stride()
        k1, s = self.k - 1, self.s
        return X.as_strided((X.shape[0], k1, k1, s, s), (b, s * r, s * c, r, c), X.storage_offset())

    def _diagonal_tiles(self, X: Tensor) -> Tensor:
        """``(B, k-1, s, s)`` view of the diagonal tiles 0 .. k-2."""
        b, r, c = X.stride()
        s = self.s
        return X.as_strided(
            (X.shape[0], self.k - 1, s, s), (b, s * (r + c), r, c), X.storage_offset()
        )

    # -- encoding ------------------------------------------------------------------------------
    def encode(self, X: Tensor, codebook: str, bits: int) -> tuple[Tensor, Tensor]:
        """Codes ``(B, N)`` (uint8, unpacked, storage order) and chunk scales ``(B, chunks)``
        of the strict lower triangles of ``X`` ``(B, n, n)`` (fp32, any strides)."""
        X = X.contiguous()  # the tile views below keep its strides; contiguous reshapes view
        if not (self.mapped and self.numel):
            return self._encode_tiles(X, codebook, bits)
        B = X.shape[0]
        *_, rows, slots = self._maps(X.device)
        chunks = X.view(B, -1).index_select(-1, rows).view(B, -1, self.s)
        scales = absmax_normalize_(chunks)
        codes = nearest_codes(chunks, codebook, bits).view(B, -1).index_select(-1, slots)
        return codes, scales

    def _encode_tiles(self, X: Tensor, codebook: str, bits: int) -> tuple[Tensor, Tensor]:
        """``encode`` tile by tile, of contiguous ``X``."""
        B, s, k, t = X.shape[0], self.s, self.k, self.t
        device = X.device
        codes: list[Tensor] = []
        scales: list[Tensor] = []

        def whole_chunks(rows: Tensor) -> None:  # rows (B, chunks, s): a fresh tensor
            a = absmax_normalize_(rows)
            codes.append(nearest_codes(rows, codebook, bits).view(B, -1))
            scales.append(a)

        def triangles(tiles: Tensor, order: int) -> None:  # (B, m, order, order), fresh
            a = absmax_normalize_(tiles)
            pos, _ = _tile_triangle(order, device)
            stored = tiles.view(B, tiles.shape[1], -1).index_select(-1, pos)
            codes.append(nearest_codes(stored, codebook, bits).view(B, -1))
            scales.append(a[..., 1:].reshape(B, -1))  # row 0 of a tile has no entries

        if k > 2:
            # the off-diagonal tiles, a few at a time: each piece is gathered (a copy),
            # normalized and coded, so that the copies never hold the whole triangle
            p, q = _tile_pairs(k, device)
            grid = self._grid(X)
            step = max(1, min(k, PIECE_BYTES // (4 * B * s * s)))
            for i in range(0, p.numel(), step):
                whole_chunks(grid[:, p[i : i + step], q[i : i + step]].reshape(B, -1, s))
        if k > 1:
            whole_chunks(X[:, (k - 1) * s :, : (k - 1) * s].reshape(B, -1, s).clone())
            triangles(self._diagonal_tiles(X) * _strict_lower_mask(s, device), s)
        if t > 1:
            last = X[:, (k - 1) * s :, (k - 1) * s :] * _strict_lower_mask(t, device)
            triangles(last[:, None], t)
        if not codes:  # n == 1: nothing below the diagonal
            return X.new_zeros(B, 0, dtype=torch.uint8), X.new_zeros(B, 0)
        return torch.cat(codes, -1), torch.cat(scales, -1)

    # -- decoding ------------------------------------------------------------------------------
    def decode_into(self, values_of, scales: Tensor, out: Tensor, symmetric: bool) -> None:
        """Write the strict lower triangles that ``scales`` ``(B, chunks)`` and the stored
        entries ``values_of`` gives describe into ``out`` ``(B, n, n)``.

        ``values_of(lo, hi)``: the unscaled fp32 codebook values ``(B, hi - lo)`` of stored
        entries ``lo .. hi - 1`` (a new tensor). The off-diagonal tiles are decoded a piece at a
        time (as ``encode`` codes them), so that the values never cover the whole triangle;
        orders up to ``MAP_MAX_ORDER`` whole, through the index maps.

        ``symmetric``: also into the upper triangle (every entry of ``out`` is written, the
        diagonal with zeros: the caller writes it). Otherwise only the strict lower triangle
        and the diagonal tiles (zeros above their diagonal); ``out`` must start as zeros.
        """
        if self.mapped and self.numel:
            symmetric_map, lower_map, chunk, *_ = self._maps(out.device)
            values = values_of(0, self.numel).mul_(scales.index_select(-1, chunk))
            values = torch.cat([values, values.new_zeros(out.shape[0], 1)], -1)  # N: a zero
            entries = symmetric_map if symmetric else lower_map
            out.copy_(values.index_select(-1, entries).view(out.shape))
            return
        self._decode_tiles(values_of, scales, out, symmetric)

    def _decode_tiles(self, values_of, scales: Tensor, out: Tensor, symmetric: bool) -> None:
        """``decode_into`` tile by tile."""
        B, s, k = out.shape[0], self.s, self.k
        device = out.device
        sa, sb, sc, sd = self._split(scales, self.chunk_counts)
        if k > 2:
            p, q = _tile_pairs(k, device)
            grid = self._grid(out)
            sa = sa.view(B, -1, s, 1)
            step = max(1, min(k, PIECE_BYTES // (4 * B * s * s)))
            for i in range(0, p.numel(), step):
                j = min(p.numel(), i + step)
                tiles = values_of(i * s * s, j * s * s).view(B, j - i, s, s).mul_(sa[:, i:j])
                grid[:, p[i:j], q[i:j]] = tiles
                if symmetric:
                    grid[:, q[i:j], p[i:j]] = tiles.mT
                del tiles
        # the last tile row and the diagonal tiles: about n s entries
        _, b, c, d = self._split(values_of(self.sizes[0], self.numel), (0, *self.sizes[1:]))
        if k > 1:
            strip = self._last_row(b, sb)
            out[:, (k - 1) * s :, : (k - 1) * s] = strip
            if symmetric:
                out[:, : (k - 1) * s, (k - 1) * s :] = strip.mT
            self._diagonal_tiles(out).copy_(self._diagonal(c, sc, 0, k - 1, symmetric))
        self._last_tile(d, sd, out[:, (k - 1) * s :, (k - 1) * s :], symmetric)

    def _last_row(self, b: Tensor, sb: Tensor) -> Tensor:
        """Part B's ``(B, t*(k-1)*s)`` values times its scales: the ``(B, t, (k-1) s)`` block
        left of the last diagonal tile (in place)."""
        B = b.shape[0]
        return b.view(B, -1, self.s).mul_(sb.unsqueeze(-1)).view(B, self.t, -1)

    def _diagonal(self, c: Tensor, sc: Tensor, p0: int, p1: int, symmetric: bool) -> Tensor:
        """Diagonal tiles ``p0 .. p1-1`` (full ones) ``(B, p1 - p0, s, s)`` from their part-C
        values ``(B, (p1 - p0) s(s-1)/2)`` (scaled in place) and all of part C's scales."""
        B, s, device = c.shape[0], self.s, c.device
        _, row = _tile_triangle(s, device)
        scales = sc.view(B, self.k - 1, s - 1)[:, p0:p1].index_select(-1, row)
        return _tiles(c.view(B, p1 - p0, -1).mul_(scales), s, device, symmetric)

    def _last_tile(self, d: Tensor, sd: Tensor, last: Tensor, symmetric: bool) -> None:
        """Write the last diagonal tile ``last`` ``(B, t, t)`` from part D's values (scaled in
        place); with ``symmetric`` every entry, the diagonal with zeros."""
        t = self.t
        if t > 1:
            _, row = _tile_triangle(t, d.device)
            d = d.mul_(sd.index_select(-1, row))
            last.copy_(_tiles(d.view(d.shape[0], 1, -1), t, d.device, symmetric)[:, 0])
        elif symmetric:
            last.zero_()

    # -- row strips of the symmetric matrix ------------------------------------------------
    def decode_rows(
        self, values_of, runs_of, scales: Tensor, diag: Tensor, out: Tensor, p0: int, p1: int
    ) -> None:
        """Write rows ``p0 s .. min(p1 s, n) - 1`` (tile rows ``p0 .. p1-1``) of the symmetric
        matrices ``T + T^T + diag(diag)`` into ``out`` ``(B, rows, n)``, every entry of it.

        ``values_of(lo, hi)`` as for ``decode_into``; ``runs_of(index, width)``: the unscaled
        values ``(B, len(index) * width)`` of the stored entries ``i * width .. (i+1) * width - 1``
        for each ``i`` of ``index`` (a tensor), here whole tiles of part A. Row ``p``'s strip
        needs tile row ``p`` (its tiles left of the diagonal, contiguous in A, its diagonal
        tile from C) and tile column ``p`` below the diagonal, transposed (one tile in each
        later tile row of A, and columns of B): one gather of A's tiles by tile index, and a
        fixed number of operations whatever the strip. ``diag``: ``(B, n)``, the exact diagonal.
        """
        B, s, k = out.shape[0], self.s, self.k
        device = out.device
        sa, sb, sc, sd = self._split(scales, self.chunk_counts)
        r, c = out.stride()[1:]
        pe = min(p1, k - 1)  # the strip's full tile rows: p0 .. pe-1; with p1 == k the last too
        full = (pe - p0) * s
        sizes = self.sizes
        if pe > p0 and k > 2:
            index, lower, upper = _strip_tiles(k, p0, pe, device)
            if index.numel():
                grid = out.as_strided(
                    (B, pe - p0, k - 1, s, s),
                    (out.stride(0), s * r, s * c, r, c),
                    out.storage_offset(),
                )
                tiles = runs_of(index, s * s).view(B, -1, s, s)
                tiles.mul_(sa.view(B, -1, s, 1).index_select(1, index))
                m = lower[0].numel()
                grid[:, lower[0], lower[1]] = tiles[:, :m]
                grid[:, upper[0], upper[1]] = tiles[:, m:].mT
                del tiles
        if k > 1:
            # the last tile row: its rows if the strip holds it, else its columns of the strip
            strip = self._last_row(values_of(sizes[0], sizes[0] + sizes[1]), sb)
            if pe > p0:
                out[:, :full, (k - 1) * s :] = strip[:, :, p0 * s : pe * s].mT
            if p1 == k:
                out[:, full:, : (k - 1) * s] = strip
            del strip
            if pe > p0:
                lo = sizes[0] + sizes[1] + p0 * (s * (s - 1) // 2)
                hi = lo + (pe - p0) * (s * (s - 1) // 2)
                tiles = self._diagonal(values_of(lo, hi), sc, p0, pe, True)
                out.as_strided(
                    (B, pe - p0, s, s),
                    (out.stride(0), s * (r + c), r, c),
                    out.storage_offset() + p0 * s * c,
                ).copy_(tiles)
                del tiles
        if p1 == k:
            d = values_of(self.numel - sizes[3], self.numel)
            self._last_tile(d, sd, out[:, full:, (k - 1) * s :], True)
        out.diagonal(offset=p0 * s, dim1=-2, dim2=-1).copy_(diag[:, p0 * s : p0 * s + out.shape[1]])

    def row_strips(self, max_rows: int) -> list[tuple[int, int]]:
        """Tile rows ``(p0, p1)`` of consecutive strips of ``max(1, max_rows // s)`` tile rows
        (the last strip maybe fewer), the last tile row, if short, merged into the strip before
        it (which is then up to ``s - 1`` rows taller): a matmul of a few rows does not give
        the bits of the whole one (``benchmarks/strip_matmul.py``)."""
        k, s = self.k, self.s
        w = max(1, max_rows // s)
        whole = k - 1 if self.t < s else k  # tile rows that start a strip or are grouped
        starts = list(range(0, max(whole, 1), w))
        return list(zip(starts, [*starts[1:], k], strict=True))


def _strip_tiles(k: int, p0: int, p1: int, device: torch.device):
    """Part A's tiles that the full tile rows ``p0 .. p1-1`` (``p1 <= k-1``) need: their own
    ``(p, q < p)`` then those of their tile columns below the diagonal ``(q > p, p)``. Returns
    ``(tile index, (strip tile row, tile column) of the own ones, of the transposed ones)``."""

    def build():
        own = [(p * (p - 1) // 2 + q, p - p0, q) for p in range(max(p0, 1), p1) for q in range(p)]
        col = [
            (q * (q - 1) // 2 + p, p - p0, q) for p in range(p0, p1) for q in range(p + 1, k - 1)
        ]
        # (3, tiles) each: tile index, strip tile row, tile column; built on the host once
        parts = [
            torch.tensor(part, dtype=torch.long).view(-1, 3).T.contiguous() for part in (own, col)
        ]
        own_at, col_at = (tuple(x.to(device) for x in part[1:]) for part in parts)
        return torch.cat([parts[0][0], parts[1][0]]).to(device), own_at, col_at

    return _cached((k, p0, p1, device), build, _STRIP_CACHE, _STRIP_CACHE_SIZE)


def _tiles(values: Tensor, s: int, device: torch.device, symmetric: bool) -> Tensor:
    """``(B, m, s, s)`` tiles with the strict lower parts ``values`` ``(B, m, s(s-1)/2)``
    (row-major), zeros elsewhere, or ``T + T^T`` when ``symmetric``."""
    B, m, _ = values.shape
    pos, _ = _tile_triangle(s, device)
    tiles = torch.zeros(B, m, s * s, dtype=values.dtype, device=device)
    tiles.index_copy_(-1, pos, values)
    tiles = tiles.view(B, m, s, s)
    return tiles + tiles.mT if symmetric else tiles


def absmax_normalize_(rows: Tensor) -> Tensor:
    """Divide each row of ``rows`` ``(..., width)`` by its absmax, in place (an all-zero row
    stays zero); returns the absmax scales ``(...)``, fp32."""
    # |x| then a max: a temporary of the rows' size, but ~10x faster on a CPU than the single
    # ``aminmax`` reduction over rows this short (benchmarks/kernels.py)
    scales = rows.abs().amax(-1)
    rows.div_(torch.where(scales > 0, scales, 1.0).unsqueeze(-1))
    return scales
