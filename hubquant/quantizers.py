"""Weight quantizers: float matrices in, integer codes and scales out.

Every matrix is handled in hubquant's canonical orientation ``[out, in]``
(``N`` output channels, ``K`` reduction length), with groups running along the
reduction axis. Scales are multipliers: ``w ~ (q - zero) * scale``. int4 also
reads a kernel as Keras stores it, ``[K, N]`` (``Columns``), and quantizes it
in that layout, so no transposed float32 copy is made.
See docs/format.md for the storage conventions.

The work is a handful of fused array operations compiled with JAX, applied to
bounded chunks of rows so that memory stays proportional to the chunk.
"""

from __future__ import annotations

import concurrent.futures
import functools
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from hubquant import programs

# Clipping ratios searched per int4 group: 1.0 is plain min/max. The winner has
# the lowest *weighted* squared error, each weight counting by its magnitude
# plus the group's mean magnitude (inside GPTQ also by the mean square of its
# input channel). Chosen on a real pretrained LLM by perplexity and
# KL to float (bench/fidelity.py, README "Fidelity"): the unweighted search and
# least-squares refits of scale and offset lower weight error but raise
# perplexity above plain min/max; this rule lowers both.
CLIP_RATIOS = tuple(float(r) for r in np.linspace(1.0, 0.7, 16))
_STRIDE = 3  # coarse step of the clip search: CLIP_RATIOS[::3] = 1.0, 0.94, ..., 0.7
_CHUNK_ELEMENTS = 1 << 22  # values per block of rows read at once (few reads of a file)
# int4: groups per compiled call. One shape serves every matrix whose rows have
# at most this many groups (one compilation, not one per matrix size), and a
# block this size (1 MiB of float32 at g128) stays in cache.
_CHUNK_GROUPS = 2048


@dataclass(frozen=True)
class QuantizedMatrix:
    """Integer codes and their scales for one ``[N, K]`` matrix."""

    codes: np.ndarray  # int8 [N, K] (int8) or packed int8 [N, ceil(K/2)] (int4)
    scale: np.ndarray  # float32 [N] (int8) or [N, G] (int4)
    zero: np.ndarray | None  # int8 [N, G] for asymmetric int4, else None


def group_length(k: int, group_size: int) -> int:
    """Values per group as quantized (a group size of -1 or above ``K``: ``K``)."""
    return k if group_size == -1 else min(group_size, k)


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


class Columns:
    """An ``[N, K]`` matrix held as its transpose ``[K, N]``, as Keras stores a
    Dense kernel, read a block of ``K`` rows at a time in any float dtype.

    int4 quantizes it in that layout (each group runs down a column), so no
    transposed float32 copy of the matrix is ever made; other modes read it
    through ``as_rows``. ``shape`` is the matrix's ``[N, K]``.
    """

    def __init__(self, shape: tuple[int, int], read):
        self.shape = (int(shape[0]), int(shape[1]))
        self._read = read  # read(start, stop) -> rows start..stop of [K, N]

    def __call__(self, start: int, stop: int) -> np.ndarray:
        return np.asarray(self._read(start, stop))

    @classmethod
    def of(cls, transposed) -> Columns:
        """Over an array ``[K, N]``."""
        return cls((transposed.shape[1], transposed.shape[0]), lambda a, b: transposed[a:b])


def as_rows(w) -> RowReader:
    """A reader over an array (or a reader, unchanged)."""
    if isinstance(w, RowReader):
        return w
    if isinstance(w, Columns):
        w = w(0, w.shape[1]).T  # each block of rows becomes float32 as it is read
    w = np.asarray(w)
    return RowReader(w.shape, lambda start, stop: w[start:stop])


def quantize(
    w, mode: str, group_size: int = -1, symmetric: bool = True, clip: bool = True
) -> QuantizedMatrix:
    """``quantize_int8`` or ``quantize_int4``, by mode name."""
    if mode == "int8":
        return quantize_int8(w)
    return quantize_int4(w, group_size, symmetric, clip)


def quantize_int8(w) -> QuantizedMatrix:
    """Symmetric int8, one scale per output row: abs-max, then a least-squares
    scale for the rounded codes (never clipped: outlier weights stay exact).

    Plain NumPy over bounded blocks of rows: a few passes, nothing to compile.
    """
    rows = as_rows(w)
    n, k = rows.shape
    step = max(1, _CHUNK_ELEMENTS // max(1, k))
    codes, scale = np.empty((n, k), np.int8), np.empty(n, np.float32)

    def block(i: int) -> None:  # NumPy lets go of the GIL: two blocks run at once
        codes[i : i + step], scale[i : i + step] = _int8_rows(rows(i, min(n, i + step)))

    starts = range(0, n, step)
    if len(starts) == 1:
        block(0)
    else:
        with concurrent.futures.ThreadPoolExecutor(2, thread_name_prefix="hubquant-int8") as pool:
            list(pool.map(block, starts))
    return QuantizedMatrix(codes, scale, None)


def _int8_rows(w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Abs-max codes, then the least-squares scale for them: that scale's error
    ``sum(w^2) - sum(w q)^2 / sum(q^2)`` is never above abs-max's."""
    absmax = np.maximum(w.max(axis=1), -w.min(axis=1))  # no |w| copy
    scale = np.where(absmax > 0, absmax / np.float32(127), np.float32(1))
    q = w / scale[:, None]
    np.clip(np.round(q, out=q), -127, 127, out=q)
    denom = np.einsum("ij,ij->i", q, q)
    # float64 sums: w * q overflows float32 for weights near its largest value.
    ls = np.einsum("ij,ij->i", w, q, dtype=np.float64) / np.where(denom > 0, denom, 1)
    return q.astype(np.int8), np.where(denom > 0, ls, scale).astype(np.float32)


def quantize_int4(
    w, group_size: int = 128, symmetric: bool = False, clip: bool = True
) -> QuantizedMatrix:
    """Group-wise int4 with a weighted clipping search (``clip`` False: each
    group's own min and max); codes packed two per byte.

    Rows are read in blocks of about ``_CHUNK_ELEMENTS`` values (few reads of
    a file) and quantized in runs of whole rows of at most ``_CHUNK_GROUPS``
    groups (at least one row), each padded to that compiled shape. A group
    size above ``K`` is one group of ``K``.
    """
    ratios = CLIP_RATIOS if clip else (1.0,)
    if isinstance(w, Columns):
        return _int4_columns(w, group_size, symmetric, ratios)
    rows = as_rows(w)
    n, k = rows.shape
    gs = group_length(k, group_size)
    g = num_groups(k, gs)
    run = max(1, _CHUNK_GROUPS // g)
    step = run * max(1, _CHUNK_ELEMENTS // (run * g * gs))
    bucket = max(_CHUNK_GROUPS, 1 << (g - 1).bit_length())
    fn = functools.partial(_grid_chunk, symmetric=symmetric, bits=4, ratios=ratios)
    parts = []
    for start in range(0, n, step):
        block = rows(start, min(n, start + step))
        for first in range(0, len(block), run):
            codes, scale, zero = _int4_rows(fn, block[first : first + run], g, gs, bucket)
            parts.append((pack_int4(codes), scale, zero))
    codes, scale, zero = (np.concatenate(p) for p in zip(*parts, strict=True))
    return QuantizedMatrix(codes, scale, None if symmetric else zero)


def _int4_rows(fn, w: np.ndarray, g: int, gs: int, bucket: int):
    """One block of rows: padded to whole groups, run as ``bucket`` groups."""
    r, k = w.shape
    flat = np.zeros((bucket, gs), np.float32)
    flat[: r * g].reshape(r, g * gs)[:, :k] = w
    codes, scale, zero = (np.asarray(p)[: r * g] for p in fn(jnp.asarray(flat), np.float32(1)))
    return codes.reshape(r, g * gs)[:, :k], scale.reshape(r, g), zero.reshape(r, g)


def _int4_columns(cols: Columns, group_size: int, symmetric: bool, ratios) -> QuantizedMatrix:
    """``quantize_int4`` of a matrix held as ``[K, N]``: the same rule without a
    float copy of the matrix (the errors of two clip ratios equal to float
    rounding can tie-break the other way: 14 of 15.4M groups of the
    Gemma-2B-shaped preset took the neighbouring ratio). Each block of rows is laid
    out as one ``[gs, groups * N]`` array (group after group, a cheap copy of
    whole rows) and cut into ``[gs, _CHUNK_GROUPS]`` slabs, so every matrix
    of a group size runs one compiled shape; each slab is converted to
    float32, quantized, packed (two codes a byte down the rows) and
    transposed in that call. A block's slabs are all dispatched before any
    result is read back."""
    n, k = cols.shape
    gs = group_length(k, group_size)
    g, half = num_groups(k, gs), 2 if gs % 2 == 0 else 1
    codes = np.empty((g * n, gs // half), np.int8)  # row: group * N + output channel
    scale, zero = np.empty(g * n, np.float32), np.empty(g * n, np.int8)
    step = gs * max(1, _CHUNK_ELEMENTS // (gs * n))
    for start in range(0, k, step):
        flat = _group_major(cols(start, min(k, start + step)), gs)
        first, width = start // gs * n, flat.shape[1]
        outs = [
            (c, _column_slab(flat[:, c : c + _CHUNK_GROUPS], symmetric, half == 2, gs, ratios))
            for c in range(0, width, _CHUNK_GROUPS)
        ]
        for c, out in outs:
            q, s, z, finite = (np.asarray(part) for part in out)
            if not finite:
                raise _first_non_finite(cols)
            rows = slice(first + c, first + min(width, c + _CHUNK_GROUPS))
            used = rows.stop - rows.start
            codes[rows], scale[rows], zero[rows] = q[:used], s[:used], z[:used]
    codes = codes.reshape(g, n, -1).transpose(1, 0, 2).reshape(n, -1)  # [N, G * gs / half]
    if half == 2:
        codes = np.ascontiguousarray(codes[:, : -(-k // 2)])
        if k % 2:
            codes[:, -1] &= 0x0F  # the odd last code's partner is 0, as pack_int4 pads
    else:
        codes = pack_int4(codes[:, :k])
    zero = None if symmetric else np.ascontiguousarray(zero.reshape(g, n).T)
    return QuantizedMatrix(codes, np.ascontiguousarray(scale.reshape(g, n).T), zero)


def _group_major(block: np.ndarray, gs: int) -> np.ndarray:
    """Rows ``[m * gs, N]`` (the last group zero-padded) as ``[gs, m * N]``."""
    m = -(-len(block) // gs)
    if len(block) != m * gs:
        block = np.concatenate(
            [block, np.zeros((m * gs - len(block), block.shape[1]), block.dtype)]
        )
    return block.reshape(m, gs, -1).transpose(1, 0, 2).reshape(gs, -1)


def _column_slab(slab: np.ndarray, symmetric: bool, pack: bool, gs: int, ratios):
    """One ``[gs, _CHUNK_GROUPS]`` slab (zero-padded to it) through ``_columns_chunk``."""
    if slab.shape[1] != _CHUNK_GROUPS:
        padded = np.zeros((gs, _CHUNK_GROUPS), slab.dtype)
        padded[:, : slab.shape[1]] = slab
        slab = padded
    program = _slab_program(gs, jnp.dtype(slab.dtype).name, symmetric, pack, ratios)
    return program.result()(np.ascontiguousarray(slab))  # compiled ahead: wait for it


_PROGRAMS: dict[tuple, concurrent.futures.Future] = {}


def _slab_program(*key) -> concurrent.futures.Future:
    """``_columns_chunk`` compiled for one (group size, dtype, symmetric, pack,
    ratios), on a background thread (or loaded from ``programs``' cache): a
    future, so that compiling overlaps other work and no program is compiled
    twice."""
    key = (*key, _CHUNK_GROUPS)
    if key not in _PROGRAMS:
        gs, dtype, symmetric, pack, ratios, width = key
        slab = jax.ShapeDtypeStruct((gs, width), jnp.dtype(dtype))
        _PROGRAMS[key] = _compiler().submit(
            programs.compiled,
            _columns_chunk,
            __file__,
            (slab,),
            symmetric=symmetric,
            pack=pack,
            ratios=ratios,
        )
    return _PROGRAMS[key]


def compile_ahead(variants) -> None:
    """Start compiling the int4 slab programs of ``variants`` (``K``, group size,
    float dtype, symmetric, clip), each on a background thread, so that compiling
    overlaps reading and quantizing the matrices before their first slab (on
    this 2-core machine two variants compiled one after the other took 0.7 s
    of a 1.8 s quantize)."""
    for k, group_size, dtype, symmetric, clip in set(variants):
        gs = group_length(k, group_size)
        ratios = CLIP_RATIOS if clip else (1.0,)
        _slab_program(gs, jnp.dtype(dtype).name, symmetric, gs % 2 == 0, ratios)


@functools.cache
def _compiler() -> concurrent.futures.ThreadPoolExecutor:
    return concurrent.futures.ThreadPoolExecutor(2, thread_name_prefix="hubquant-compile")


@functools.partial(jax.jit, static_argnames=("symmetric", "pack", "ratios"))
def _columns_chunk(w, symmetric: bool, pack: bool, ratios: tuple[float, ...]):
    """``_grid_chunk`` for groups running down the columns of ``w`` ``[gs, M]``
    (any float dtype): codes ``[M, gs]`` (``[M, gs / 2]`` packed two to a
    byte when ``pack``), scales, zero points, and whether every value was
    finite."""
    w = w.astype(jnp.float32)
    codes, scale, zero = _best_candidate(w, 1.0, symmetric, 4, ratios, axis=0)
    if pack:
        codes = (codes[0::2].astype(jnp.uint8) & 0x0F) | (codes[1::2].astype(jnp.uint8) << 4)
        codes = lax.bitcast_convert_type(codes, jnp.int8)
    return codes.T, scale, zero, jnp.all(jnp.isfinite(w))


def _first_non_finite(cols: Columns) -> NonFiniteWeights:
    """The first non-finite value in ``[N, K]`` order, as ``RowReader`` names it."""
    values = cols(0, cols.shape[1])
    bad = np.argwhere(~np.isfinite(np.asarray(values, np.float32)))
    k, n = bad[np.lexsort((bad[:, 0], bad[:, 1]))[0]]
    return NonFiniteWeights(int(n), int(k), float(values[k, n]))


def requantize_on_grid(w, mode: str, group_size: int, kept: QuantizedMatrix) -> QuantizedMatrix:
    """``w`` (float ``[N, K]``, close to what ``kept`` holds) on ``kept``'s grid:
    each value rounds to the nearest level of its own scale and zero point, so a
    value that moved by less than half a step keeps its code. A row (int8) or
    group (int4) that no longer fits its range is chosen afresh by the usual rule.
    """
    w = as_rows(w)(0, np.shape(w)[0])  # float32; NaN or Inf refused (NonFiniteWeights)
    if mode == "int8":
        q = np.round(w / kept.scale[:, None])
        out = np.abs(q).max(axis=1) > 127
        codes, scale = np.clip(q, -127, 127).astype(np.int8), kept.scale.copy()
        if out.any():
            codes[out], scale[out] = _int8_rows(w[out])
        return QuantizedMatrix(codes, scale, None)
    n, k = w.shape
    g = kept.scale.shape[1]
    gs = group_length(k, group_size)
    padded = np.zeros((n, g * gs), np.float32)
    padded[:, :k] = w
    zero = np.zeros_like(kept.scale) if kept.zero is None else kept.zero.astype(np.float32)
    q = np.round(padded.reshape(n, g, gs) / kept.scale[..., None]) + zero[..., None]
    out = (q.min(axis=-1) < -8) | (q.max(axis=-1) > 7)  # [N, G]
    codes = np.clip(q, -8, 7).astype(np.int8).reshape(n, g * gs)[:, :k]
    scale, zero = kept.scale.copy(), None if kept.zero is None else kept.zero.copy()
    rows = np.flatnonzero(out.any(axis=1))
    if rows.size:
        fresh = quantize_int4(w[rows], group_size, kept.zero is None)
        grown = out[rows]
        mask = np.repeat(grown, gs, axis=1)[:, :k]
        codes[rows] = np.where(mask, unpack_int4(fresh.codes, k), codes[rows])
        scale[rows] = np.where(grown, fresh.scale, scale[rows])
        if zero is not None:
            zero[rows] = np.where(grown, fresh.zero, zero[rows])
    return QuantizedMatrix(pack_int4(codes), scale, zero)


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
    gs = group_length(k, group_size)
    g = matrix.scale.shape[1]
    padded = np.zeros((n, g * gs), np.float32)
    padded[:, :k] = q
    grouped = padded.reshape(n, g, gs)
    if matrix.zero is not None:
        grouped = grouped - matrix.zero[..., None].astype(np.float32)
    return (grouped * matrix.scale[..., None]).reshape(n, g * gs)[:, :k]


@functools.partial(jax.jit, static_argnames=("symmetric", "bits", "ratios"))
def _grid_chunk(w, channel, symmetric: bool, bits: int, ratios: tuple[float, ...]):
    """Best of the clipped candidates per group, by weighted squared error.

    ``w`` is ``[rows, G, gs]``, ``channel`` a weight per value of the same shape
    (or 1, without calibration); returns signed codes, scales and zero points.
    Each value's error counts by ``channel * (|w| + mean |w| of its group)``:
    large weights matter more to a layer's outputs than their share of the
    squared error says. A group whose largest magnitude passes 2^32 is first
    divided by a power of two (exact: the same codes, the scale multiplied back
    exactly), so no range or square overflows float32 even near its largest
    value. Other groups divide by 1: XLA flushes subnormals, so 1/unit must stay
    normal.
    """
    # Flat [groups, gs] work: XLA's CPU fusions run several times slower on a
    # [rows, G, gs] layout once a second operand of that shape joins in.
    shape = w.shape
    w = w.reshape(-1, shape[-1])
    if jnp.ndim(channel):
        channel = jnp.broadcast_to(channel, shape).reshape(w.shape)
    codes, scale, zero = _best_candidate(w, channel, symmetric, bits, ratios)
    return codes.reshape(shape), scale.reshape(shape[:-1]), zero.reshape(shape[:-1])


def _best_candidate(w, channel, symmetric: bool, bits: int, ratios: tuple[float, ...], axis=-1):
    """Codes, scales and zero points of the groups of ``w``, each running along
    ``axis`` (-1: a group per row; 0: a group per column)."""
    peak = jnp.max(jnp.abs(w), axis=axis)
    unit = jnp.exp2(jnp.maximum(jnp.floor(jnp.log2(jnp.maximum(peak, 1.0))) - 32, 0.0))
    w = w / jnp.expand_dims(unit, axis)
    magnitude = jnp.abs(w)
    weights = channel * (magnitude + jnp.mean(magnitude, axis=axis, keepdims=True))
    if len(ratios) == 1:  # nothing to search: plain min/max when it is 1.0
        best = jnp.asarray(ratios[0], w.dtype)
    else:
        best = _search(w, weights, jnp.asarray(ratios, w.dtype), symmetric, bits, axis)
    codes, scale, zero, _ = _candidate(w, weights, best, symmetric, bits, axis)
    return codes.astype(jnp.int8), scale * unit, zero.astype(jnp.int8)


def _search(w, weights, ratios, symmetric: bool, bits: int, axis=-1):
    """Each group's best ratio, coarse to fine: every ``_STRIDE``-th ratio
    first, then the ratios within ``_STRIDE // 2`` places of the best of those.
    Of equal errors the earlier candidate (plain min/max first) wins."""
    error = _errors_in_steps(w, weights, symmetric, bits, axis)
    coarse = np.arange(0, ratios.shape[0], _STRIDE)
    errors = jnp.stack([error(ratios[i]) for i in coarse])
    centre = jnp.asarray(coarse)[jnp.argmin(errors, axis=0)]
    steps = [d for d in range(-(_STRIDE // 2), _STRIDE // 2 + 1) if d]
    near = jnp.stack([jnp.clip(centre + d, 0, ratios.shape[0] - 1) for d in steps])
    tried = jnp.concatenate([jnp.broadcast_to(jnp.asarray(coarse)[:, None], errors.shape), near])
    errors = jnp.concatenate([errors, jnp.stack([error(ratios[i]) for i in near])])
    return ratios[jnp.take_along_axis(tried, jnp.argmin(errors, axis=0)[None], 0)[0]]


def _errors_in_steps(w, weights, symmetric: bool, bits: int, axis=-1):
    """``error(ratio)``: each group's weighted squared error at a clipping
    ratio (a number or one per group), in units of its unclipped step (the
    same order as ``_candidate``'s errors within a group: the ratio scales the
    step, and with it the zero point's position, exactly). One fused
    reduction per call: the values in steps are computed once."""
    top = 2 ** (bits - 1) - 1
    _, step, zero, _ = _candidate(w, 0.0, 1.0, symmetric, bits, axis)
    steps, zero = w / jnp.expand_dims(step, axis), jnp.expand_dims(zero, axis)

    def error(ratio):
        ratio = jnp.expand_dims(jnp.reshape(ratio, (-1,)), axis)
        q = jnp.clip(jnp.round(steps / ratio) + zero, -top - 1, top) - zero
        return jnp.sum(weights * jnp.square(q * ratio - steps), axis=axis)

    return error


def _candidate(w, weights, ratio, symmetric: bool, bits: int, axis=-1):
    """Codes, scale, zero and weighted squared error for one clipping ratio
    (a number, or one per group), groups along ``axis``.

    Symmetric codes span [-(2^(b-1) - 1), 2^(b-1) - 1] (int4 also uses -8);
    asymmetric ones [-2^(b-1), 2^(b-1) - 1] around an integer zero point.
    """
    top = 2 ** (bits - 1) - 1
    low = -top - 1 if bits == 4 else -top
    if symmetric:
        absmax = jnp.max(jnp.abs(w), axis=axis) * ratio
        scale = jnp.where(absmax > 0, absmax / top, 1.0)
        zero = jnp.zeros_like(scale)
        q = jnp.clip(jnp.round(w / jnp.expand_dims(scale, axis)), low, top)
    else:
        lo = jnp.minimum(jnp.min(w, axis=axis), 0.0) * ratio
        hi = jnp.maximum(jnp.max(w, axis=axis), 0.0) * ratio
        levels = 2**bits - 1
        scale = jnp.where(hi > lo, (hi - lo) / levels, 1.0)
        zero = jnp.clip(jnp.round(-lo / scale), 0, levels) - (top + 1)
        q = jnp.round(w / jnp.expand_dims(scale, axis)) + jnp.expand_dims(zero, axis)
        q = jnp.clip(q, -top - 1, top)
    rebuilt = (q - jnp.expand_dims(zero, axis)) * jnp.expand_dims(scale, axis)
    err = jnp.sum(weights * jnp.square(rebuilt - w), axis=axis)
    return q, scale, zero, err
