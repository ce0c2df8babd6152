"""Weight quantizers: float matrices in, integer codes and scales out.

Every matrix is handled in hubquant's canonical orientation ``[out, in]``
(``N`` output channels, ``K`` reduction length), with groups running along the
reduction axis. Scales are multipliers: ``w ~ (q - zero) * scale``.
See docs/format.md for the storage conventions.

The work is a handful of fused array operations compiled with JAX, applied to
bounded chunks of rows so that memory stays proportional to the chunk.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np

# Clipping ratios searched per group: 1.0 is plain min/max, so the search can
# only lower a group's reconstruction error.
CLIP_RATIOS = tuple(float(r) for r in np.linspace(1.0, 0.8, 11))
_CHUNK_ELEMENTS = 1 << 22
_REFINE_STEPS = 2
_MIN_CHUNK_GROUPS = 1024


@dataclass(frozen=True)
class QuantizedMatrix:
    """Integer codes and their scales for one ``[N, K]`` matrix."""

    codes: np.ndarray  # int8 [N, K] (int8) or packed int8 [N, ceil(K/2)] (int4)
    scale: np.ndarray  # float32 [N] (int8) or [N, G] (int4)
    zero: np.ndarray | None  # int8 [N, G] for asymmetric int4, else None


def num_groups(k: int, group_size: int) -> int:
    """Number of groups along a reduction axis of length ``k``."""
    return 1 if group_size == -1 else -(-k // group_size)


class NonFiniteWeights(ValueError):
    """A matrix holds NaN or Inf (or a finite value float32 cannot hold)."""

    def __init__(self, row: int, column: int, value: float):
        super().__init__(f"row {row}, column {column} holds {value}")
        self.row, self.column, self.value = row, column, value


class RowReader:
    """Rows of an ``[N, K]`` float matrix, read on demand as float32.

    Quantizers take a reader or an array: both are consumed in the same
    blocks of rows, so a matrix read lazily (from a weights file, block by
    block) quantizes to exactly the bytes the whole matrix in memory gives.
    """

    def __init__(self, shape: tuple[int, int], read):
        self.shape = (int(shape[0]), int(shape[1]))
        self._read = read

    def __call__(self, start: int, stop: int) -> np.ndarray:
        rows = np.ascontiguousarray(self._read(start, stop), dtype=np.float32)
        if not np.isfinite(rows).all():
            bad = np.argwhere(~np.isfinite(rows))[0]
            raise NonFiniteWeights(int(start + bad[0]), int(bad[1]), float(rows[tuple(bad)]))
        return rows


def as_rows(w) -> RowReader:
    """A reader over an array (or a reader, unchanged)."""
    if isinstance(w, RowReader):
        return w
    w = np.asarray(w)
    return RowReader(w.shape, lambda start, stop: w[start:stop])


def quantize(w, mode: str, group_size: int = -1, symmetric: bool = True) -> QuantizedMatrix:
    """``quantize_int8`` or ``quantize_int4``, by mode name."""
    if mode == "int8":
        return quantize_int8(w)
    return quantize_int4(w, group_size, symmetric)


def quantize_int8(w) -> QuantizedMatrix:
    """Symmetric int8, one scale per output row: abs-max, then a least-squares
    scale for the rounded codes (never clipped: outlier weights stay exact).

    Plain NumPy over bounded blocks of rows: a few passes, nothing to compile.
    """
    rows = as_rows(w)
    n, k = rows.shape
    step = max(1, _CHUNK_ELEMENTS // max(1, k))
    parts = [_int8_rows(rows(i, min(n, i + step))) for i in range(0, n, step)]
    codes, scale = (np.concatenate(p) for p in zip(*parts, strict=True))
    return QuantizedMatrix(codes, scale, None)


def _int8_rows(w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Abs-max codes, then the least-squares scale for them: that scale's error
    ``sum(w^2) - sum(w q)^2 / sum(q^2)`` is never above abs-max's."""
    absmax = np.abs(w).max(axis=1)
    scale = np.where(absmax > 0, absmax / np.float32(127), np.float32(1))
    q = np.clip(np.round(w / scale[:, None]), -127, 127)
    denom = np.einsum("ij,ij->i", q, q)
    # float64 sums: w * q overflows float32 for weights near its largest value.
    ls = np.einsum("ij,ij->i", w, q, dtype=np.float64) / np.where(denom > 0, denom, 1)
    return q.astype(np.int8), np.where(denom > 0, ls, scale).astype(np.float32)


def quantize_int4(w, group_size: int = 128, symmetric: bool = False) -> QuantizedMatrix:
    """Group-wise int4 with a clipping search; codes packed two per byte.

    Rows are read and quantized in blocks of about ``_CHUNK_ELEMENTS`` values;
    every block but the last has the same compiled shape.
    """
    rows = as_rows(w)
    n, k = rows.shape
    gs = k if group_size == -1 else group_size
    g = num_groups(k, group_size)
    step = max(1, _CHUNK_ELEMENTS // (g * gs))
    bucket = max(_MIN_CHUNK_GROUPS, 1 << (min(n, step) * g - 1).bit_length())
    fn = functools.partial(_grid_chunk, symmetric=symmetric, bits=4, ratios=CLIP_RATIOS)
    parts = []
    for start in range(0, n, step):
        block = rows(start, min(n, start + step))
        codes, scale, zero = _int4_rows(fn, block, g, gs, bucket)
        parts.append((pack_int4(codes), scale, zero))
    codes, scale, zero = (np.concatenate(p) for p in zip(*parts, strict=True))
    return QuantizedMatrix(codes, scale, None if symmetric else zero)


def _int4_rows(fn, w: np.ndarray, g: int, gs: int, bucket: int):
    """One block of rows: padded to whole groups, run as ``bucket`` groups."""
    r, k = w.shape
    flat = np.zeros((bucket, 1, gs), np.float32)
    flat[: r * g].reshape(r, g * gs)[:, :k] = w
    codes, scale, zero = (np.asarray(p)[: r * g] for p in fn(jnp.asarray(flat)))
    return codes.reshape(r, g * gs)[:, :k], scale.reshape(r, g), zero.reshape(r, g)


def pack_int4(codes: np.ndarray) -> np.ndarray:
    """Pack int4 codes in [-8, 7] along the last axis: even index in the low nibble."""
    if codes.shape[-1] % 2:
        codes = np.concatenate([codes, np.zeros_like(codes[..., :1])], axis=-1)
    low = codes[..., 0::2].astype(np.uint8) & 0x0F
    high = (codes[..., 1::2].astype(np.uint8) & 0x0F) << 4
    return (low | high).view(np.int8)


def unpack_int4(packed: np.ndarray, length: int) -> np.ndarray:
    """Inverse of ``pack_int4`` (NumPy), trimmed to ``length`` along the last axis."""
    low = (packed.astype(np.int8) << 4) >> 4
    high = packed.astype(np.int8) >> 4
    out = np.stack([low, high], axis=-1).reshape(*packed.shape[:-1], -1)
    return out[..., :length]


def dequantize(matrix: QuantizedMatrix, k: int, group_size: int | None = None) -> np.ndarray:
    """Float32 ``[N, K]`` reconstruction (NumPy), for reports and exports."""
    if group_size is None:
        return matrix.codes.astype(np.float32) * matrix.scale[:, None]
    q = unpack_int4(matrix.codes, k).astype(np.float32)
    n = q.shape[0]
    gs = k if group_size == -1 else group_size
    g = matrix.scale.shape[1]
    padded = np.zeros((n, g * gs), np.float32)
    padded[:, :k] = q
    grouped = padded.reshape(n, g, gs)
    if matrix.zero is not None:
        grouped = grouped - matrix.zero[..., None].astype(np.float32)
    return (grouped * matrix.scale[..., None]).reshape(n, g * gs)[:, :k]


@functools.partial(jax.jit, static_argnames=("symmetric", "bits", "ratios"))
def _grid_chunk(w, symmetric: bool, bits: int, ratios: tuple[float, ...]):
    """Best (by squared error) of the clipped candidates, per group.

    ``w`` is ``[rows, G, gs]``; returns signed codes, scales and zero points.
    A group whose largest magnitude passes 2^32 is first divided by a power of
    two (exact: the same codes, the scale multiplied back exactly), so no range or
    square overflows float32 even for weights near its largest value. Other
    groups divide by 1: XLA flushes subnormals, so 1/unit must stay normal.
    """
    peak = jnp.max(jnp.abs(w), axis=-1)
    unit = jnp.exp2(jnp.maximum(jnp.floor(jnp.log2(jnp.maximum(peak, 1.0))) - 32, 0.0))
    w = w / unit[..., None]
    best = _candidate(w, ratios[0], symmetric, bits)

    def keep_better(best, ratio):
        cand = _candidate(w, ratio, symmetric, bits)
        better = cand[3] < best[3]
        q = jnp.where(better[..., None], cand[0], best[0])
        rest = (jnp.where(better, c, b) for c, b in zip(cand[1:], best[1:], strict=False))
        return (q, *rest), None

    if len(ratios) > 1:
        best, _ = jax.lax.scan(keep_better, best, jnp.asarray(ratios[1:]))
    if not symmetric:
        for _ in range(_REFINE_STEPS):
            best = _refit_affine(w, best, bits)
    codes, scale, zero, _ = _refine_scale(w, *best[:3])
    return codes, scale * unit, zero


def _refit_affine(w, best, bits: int):
    """Least-squares scale and offset for the chosen codes, then re-round.

    The zero point is rounded back to an integer and the codes recomputed;
    a group keeps the new values only where its error drops.
    """
    q, scale, zero, err = best
    top = 2 ** (bits - 1) - 1
    u_mean = jnp.mean(q, axis=-1, keepdims=True)
    w_mean = jnp.mean(w, axis=-1, keepdims=True)
    cov = jnp.sum((q - u_mean) * (w - w_mean), axis=-1)
    var = jnp.sum(jnp.square(q - u_mean), axis=-1)
    a = jnp.where((var > 0) & (cov > 0), cov / jnp.where(var > 0, var, 1.0), scale)
    offset = w_mean[..., 0] - a * u_mean[..., 0]  # w ~ a * q + offset
    new_zero = jnp.clip(jnp.round(-offset / a), -top - 1, top)
    new_q = jnp.clip(jnp.round(w / a[..., None]) + new_zero[..., None], -top - 1, top)
    new_err = jnp.sum(jnp.square((new_q - new_zero[..., None]) * a[..., None] - w), axis=-1)
    better = new_err < err
    return (
        jnp.where(better[..., None], new_q, q),
        jnp.where(better, a, scale),
        jnp.where(better, new_zero, zero),
        jnp.where(better, new_err, err),
    )


def _candidate(w, ratio, symmetric: bool, bits: int):
    """Codes, scale, zero and squared error for one clipping ratio.

    Symmetric codes span [-(2^(b-1) - 1), 2^(b-1) - 1] (int4 also uses -8);
    asymmetric ones [-2^(b-1), 2^(b-1) - 1] around an integer zero point.
    """
    top = 2 ** (bits - 1) - 1
    low = -top - 1 if bits == 4 else -top
    if symmetric:
        absmax = jnp.max(jnp.abs(w), axis=-1) * ratio
        scale = jnp.where(absmax > 0, absmax / top, 1.0)
        zero = jnp.zeros_like(scale)
        q = jnp.clip(jnp.round(w / scale[..., None]), low, top)
    else:
        lo = jnp.minimum(jnp.min(w, axis=-1), 0.0) * ratio
        hi = jnp.maximum(jnp.max(w, axis=-1), 0.0) * ratio
        levels = 2**bits - 1
        scale = jnp.where(hi > lo, (hi - lo) / levels, 1.0)
        zero = jnp.clip(jnp.round(-lo / scale), 0, levels) - (top + 1)
        q = jnp.clip(jnp.round(w / scale[..., None]) + zero[..., None], -top - 1, top)
    err = jnp.sum(jnp.square((q - zero[..., None]) * scale[..., None] - w), axis=-1)
    return q, scale, zero, err


def _refine_scale(w, q, scale, zero):
    """Least-squares scale for the chosen codes: never worse than ``scale``."""
    centred = q - zero[..., None]
    denom = jnp.sum(jnp.square(centred), axis=-1)
    ls = jnp.sum(w * centred, axis=-1) / jnp.where(denom > 0, denom, 1.0)
    ls = jnp.where(denom > 0, ls, scale)
    old = jnp.sum(jnp.square(centred * scale[..., None] - w), axis=-1)
    new = jnp.sum(jnp.square(centred * ls[..., None] - w), axis=-1)
    scale = jnp.where(new < old, ls, scale)
    return q.astype(jnp.int8), scale, zero.astype(jnp.int8), jnp.minimum(new, old)
