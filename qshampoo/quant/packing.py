"""Bit packing of low-bit codes into uint8 storage.

Codes are laid out as one little-endian bit stream: code ``k`` occupies bits
``[k*bits, (k+1)*bits)``, and bit ``m`` of the stream is bit ``m % 8`` of byte ``m // 8``.
For 4 bits this is "code 2k in the low nibble of byte k, code 2k+1 in the high nibble";
for 8 bits it is the identity; for 3 bits every 8 codes fill 3 bytes.
The last byte is zero-padded. ``pack`` of N codes returns exactly ``ceil(N*bits/8)`` bytes.
Leading dimensions are a batch: each row ``(..., N)`` is packed on its own (the statistics of
same-shaped factors are re-quantized together).
"""

from __future__ import annotations

import torch


def packed_numel(n: int, bits: int) -> int:
    """Number of bytes ``pack`` produces for ``n`` codes of ``bits`` bits: ceil(n*bits/8)."""
    return (n * bits + 7) // 8


def _check_bits(bits: int) -> None:
    if isinstance(bits, bool) or not isinstance(bits, int) or not 1 <= bits <= 8:
        raise ValueError(f"bits must be an integer in 1..8, got {bits!r}")


def _check_uint8_rows(t: torch.Tensor, arg: str) -> None:
    if not isinstance(t, torch.Tensor) or t.dtype != torch.uint8:
        got = t.dtype if isinstance(t, torch.Tensor) else type(t).__name__
        raise TypeError(f"{arg} must be a torch.uint8 tensor, got {got}")
    if t.dim() < 1:
        raise ValueError(f"{arg} must have at least 1 dimension, got shape {tuple(t.shape)}")


def _check_packed(packed: torch.Tensor, n: int, bits: int) -> None:
    _check_uint8_rows(packed, "packed")
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise ValueError(f"n must be a non-negative integer, got {n!r}")
    need = packed_numel(n, bits)
    if packed.shape[-1] < need:
        raise ValueError(
            f"packed holds {packed.shape[-1]} bytes but {n} codes of {bits} bits need {need}"
        )


def pack(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """Pack uint8 codes ``(..., N)`` (each < 2**bits) into ``(..., ceil(N*bits/8))`` bytes."""
    _check_bits(bits)
    _check_uint8_rows(codes, "codes")
    batch, n = codes.shape[:-1], codes.shape[-1]
    if bits == 8:
        return codes.clone()
    if bits == 4:
        if n % 2:
            codes = torch.cat([codes, codes.new_zeros(*batch, 1)], -1)
        pairs = codes.view(*batch, -1, 2)
        return pairs[..., 0] | (pairs[..., 1] << 4)
    # Generic path: explode codes into their bits, regroup the bit stream by 8.
    shifts = torch.arange(bits, dtype=torch.uint8, device=codes.device)
    stream = ((codes.unsqueeze(-1) >> shifts) & 1).reshape(*batch, -1)
    nbytes = packed_numel(n, bits)
    pad = nbytes * 8 - stream.shape[-1]
    if pad:
        stream = torch.cat([stream, stream.new_zeros(*batch, pad)], -1)
    weights = torch.arange(8, dtype=torch.uint8, device=codes.device)
    # The 8 shifted bits are disjoint, so their sum is their bitwise or and never exceeds 255.
    return (stream.view(*batch, nbytes, 8) << weights).sum(dim=-1, dtype=torch.uint8)


def unpack(packed: torch.Tensor, bits: int, n: int) -> torch.Tensor:
    """Inverse of ``pack``: the first ``n`` codes of each row of ``packed``, ``(..., n)`` uint8."""
    _check_bits(bits)
    _check_packed(packed, n, bits)
    batch = packed.shape[:-1]
    packed = packed[..., : packed_numel(n, bits)]
    if bits == 8:
        return packed.clone()
    if bits == 4:
        out = torch.stack([packed & 0x0F, packed >> 4], dim=-1).view(*batch, -1)
        return out[..., :n]
    shifts = torch.arange(8, dtype=torch.uint8, device=packed.device)
    stream = ((packed.unsqueeze(-1) >> shifts) & 1).reshape(*batch, -1)[..., : n * bits]
    weights = torch.arange(bits, dtype=torch.uint8, device=packed.device)
    return (stream.reshape(*batch, n, bits) << weights).sum(dim=-1, dtype=torch.uint8)
