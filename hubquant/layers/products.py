"""Products of a few input rows with a quantized ``[N, K]`` matrix (decoding).

Generating one token per sequence, a projection is bound by reading its
weights. Dequantizing them first (a float copy of the matrix written and read
on every step, which XLA does for any converted, transposed or einsum-laid-out
kernel inside the generate loop) makes a quantized model slower than the float
one. So with at most ``FEW_ROWS`` rows, every projection takes its input as
``[M, K]`` rows (``RowMap``) and multiplies them with the matrix as stored:

- int8: integer dot products against the ``[N, K]`` codes, contracting their
  stored last axis, with int32 sums. Each float row is split into two int8
  parts, ``x ~ s * (hi + lo / 254)`` with ``s = max|x| / 127``, stacked so the
  codes are read once for both: about 15 bits of the input are kept (error at
  most ``max|x| / 64516`` per element), so the result is weight-only quality,
  not that of an 8-bit activation. Sums are exact for ``K`` up to 131,000.
- int4, one row: the product is one reduction over the packed codes, each
  byte split into its two nibbles with float arithmetic and weighted by the
  even and odd input elements and its group's scale; the zero points come off
  once per group (``x``'s group sums times ``zero * scale``). XLA fuses it into
  a single loop that reads every byte once and writes nothing else; the
  dequantizing form (a float matrix, then a product) wrote and read 4 bytes
  per weight, 2-3x slower on this CPU.
- int4, 2 to ``FEW_ROWS`` rows: the float matrix is formed while reading the
  packed codes, then multiplied (the reduction repeats its work per row).

Those are the XLA forms. Where ``native.available()`` (JAX on the CPU with a
C++ compiler), both modes take compiled custom calls instead, which read the
codes as stored in float32 (int8 then keeps the whole input) and run 1.5-3x
faster than the float dot on large matrices.

Many rows (a prefill, a calibration batch) are bound by arithmetic, not by
reading weights. Where compiled, they take ``tiles.cc``: panels of the matrix
are decoded from the codes into a cache-sized buffer (int4 zero points
included) and multiplied with every row, so no float copy of the matrix is
written; about as fast as XLA's float product (0.9-1.0x at SmolLM2's widths
and 512 rows). On a CPU with AMX-INT8 they take ``amx.cc`` instead: each
input block (an int4 group, or 512 int8 inputs) is cut into two int8 parts
with one scale, ``x ~ s * (hi + lo / 254)`` (about 15 bits kept, as above),
and multiplied with the codes on AMX tiles in exact int32 sums, scaled into
float32 at the block's end: faster than the float product. int4 groups that
are not whole steps of 64 inputs keep ``tiles.cc``. Elsewhere the products
keep the layers' dequantizing path. ``bench/generate_speed.py --prefill N``
measures both.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, replace

import keras
from keras import ops

from hubquant.layers import native

# At most this many input rows take the canonical-layout product.
FEW_ROWS = 16
_LO = 254.0


def product_for(rows: int | None, spec) -> str | None:
    """Which product ``rows`` input rows (None: unknown) take: compiled
    ``"int8 native"`` / ``"int4 native"`` (few rows) or ``"int8 amx"`` /
    ``"int4 amx"`` / ``"int8 tiles"`` / ``"int4 tiles"`` (more), the XLA
    forms ``"int8 rows"``, ``"int4 row"``, ``"int4 rows"``, or None for the
    layer's dequantizing path."""
    if rows is None:
        return None
    if spec.mode == "int4" and group_width(spec) % 2:  # odd groups split bytes
        return None
    if rows > FEW_ROWS:
        if not native.available():
            return None
        return f"{spec.mode} amx" if native.amx() and amx_block(spec) else f"{spec.mode} tiles"
    if native.available():
        return f"{spec.mode} native"
    if spec.mode == "int8":
        return "int8 rows"
    return "int4 row" if rows == 1 else "int4 rows"


def row_product(x, parts: list, spec):
    """``x @ W.T`` for float32 rows ``x`` ``[M, K]`` and the matrix held in
    ``parts`` (codes, scale, [zero], [input_scale]); float32 ``[M, N]``."""
    if spec.input_scale:
        x = x * parts[-1][None, :]
    kind = product_for(x.shape[0], spec)
    if kind in ("int8 native", "int8 tiles"):
        return _native_int8(kind)(x, *map(ops.convert_to_tensor, parts[:2]))
    if kind == "int8 amx":
        return _int8_amx(amx_block(spec))(x, *map(ops.convert_to_tensor, parts[:2]))
    if kind in ("int4 native", "int4 tiles", "int4 amx"):
        return _int4_native(x, parts, spec, kind)
    if kind == "int8 rows":
        return _int8_rows(x, *map(ops.convert_to_tensor, parts[:2]))
    if kind == "int4 row":
        return _int4_row(x, parts, spec)
    w = int4_matrix(parts, spec)
    return ops.matmul(_pad_last(x, w.shape[-1]), ops.transpose(w))


def _int8_rows(x, codes, scale):
    """``_int8_product`` times the row scales; on JAX its gradient with respect
    to ``x`` is that of the float product (rounding ``x`` would give none)."""
    if keras.config.backend() == "jax":
        return _int8_differentiable()(x, codes, scale)
    return _int8_product(x, codes) * scale[None, :]


@functools.cache
def _int8_differentiable():
    return native.with_input_gradient(
        lambda x, codes, scale: _int8_product(x, codes) * scale[None, :], int8_matrix
    )


def _int8_product(x, codes):
    """``x @ codes.T`` from int8 dot products (rows split in two int8 parts)."""
    row_scale = ops.max(ops.abs(x), axis=-1, keepdims=True) / 127.0
    row_scale = ops.where(row_scale > 0, row_scale, ops.ones_like(row_scale))
    hi = ops.round(x / row_scale)
    lo = ops.clip(ops.round((x - hi * row_scale) * (_LO / row_scale)), -127, 127)
    both = ops.cast(ops.concatenate([hi, lo], axis=0), "int8")
    sums = ops.cast(_int_dot(both, codes), "float32")
    rows = x.shape[0]
    return (sums[:rows] + sums[rows:] / _LO) * row_scale


def _int_dot(a, codes):
    """int32 ``a @ codes.T`` contracting the codes' stored last axis (on JAX
    directly: XLA then reads the row-major codes without a transposed copy)."""
    if keras.config.backend() == "jax":
        from jax import lax

        dims = (((1,), (1,)), ((), ()))
        codes = ops.convert_to_tensor(codes)  # a Keras variable's value
        return lax.dot_general(a, codes, dims, preferred_element_type="int32")
    return ops.matmul(a, ops.transpose(codes))


def _int4_native(x, parts: list, spec, kind: str):
    """``x @ W.T`` for float32 rows and int4 ``parts`` by a compiled call (the
    few-row one leaves the zero points to XLA, the many-row ones decode them)."""
    codes, scale = (ops.convert_to_tensor(p) for p in parts[:2])
    x_pad = _pad_last(x, 2 * codes.shape[1])
    if kind != "int4 native":
        zero = ops.convert_to_tensor(parts[2] if spec.has_zero else ops.zeros(scale.shape, "int8"))
        many = _int4_amx(spec) if kind == "int4 amx" else _tiles_int4(spec)
        return many(x_pad, codes, scale, zero)
    y = _rows_int4(spec)(x_pad, codes, scale)
    return y - _zero_offsets(x, parts, spec) if spec.has_zero else y


@functools.cache
def _rows_int4(spec):
    """The compiled few-row int4 product for ``spec``, differentiable in its input."""
    group_bytes = group_width(spec) // 2
    symmetric = replace(spec, symmetric=True)  # zero points come off outside
    return native.with_input_gradient(
        lambda x, codes, scale: native.int4_call(x, codes, scale, group_bytes),
        lambda codes, scale: int4_matrix([codes, scale], symmetric)[:, : 2 * codes.shape[1]],
    )


@functools.cache
def _tiles_int4(spec):
    """The compiled many-row int4 product for ``spec``, differentiable in its input."""
    group_bytes = group_width(spec) // 2
    asymmetric = replace(spec, symmetric=False)
    return native.with_input_gradient(
        lambda x, *parts: native.int4_tiles_call(x, *parts, group_bytes),
        lambda *parts: int4_matrix(list(parts), asymmetric)[:, : 2 * parts[0].shape[1]],
    )


# Inputs an int8 AMX product scales as one block (its sums stay exact in int32).
_INT8_BLOCK = 512


def amx_block(spec) -> int | None:
    """Inputs per block of the AMX product for ``spec`` (a multiple of 64): an
    int4 group (or the whole padded row for one group per row), 512 for int8;
    None where int4 groups are not whole steps of 64 (those take the tiles)."""
    padded = -(-(spec.k + spec.k % 2) // 64) * 64
    if spec.mode == "int8":
        return min(_INT8_BLOCK, padded)
    width = group_width(spec)
    if width >= spec.k:
        return padded
    return width if width % 64 == 0 else None


@functools.cache
def _int4_amx(spec):
    """The AMX int4 product for ``spec``, differentiable in its input."""
    asymmetric = replace(spec, symmetric=False)
    return native.with_input_gradient(
        lambda x, *parts: native.int4_amx_call(x, *parts, amx_block(spec)),
        lambda *parts: int4_matrix(list(parts), asymmetric)[:, : 2 * parts[0].shape[1]],
    )


@functools.cache
def _int8_amx(block: int):
    return native.with_input_gradient(
        lambda x, codes, scale: native.int8_amx_call(x, codes, scale, block), int8_matrix
    )


@functools.cache
def _native_int8(kind: str):
    call = native.int8_call if kind == "int8 native" else native.int8_tiles_call
    return native.with_input_gradient(call, int8_matrix)


def int8_matrix(codes, scale):
    """The float32 int8 matrix: each row's codes times its scale."""
    return ops.cast(codes, "float32") * scale[:, None]


def _zero_offsets(x, parts: list, spec):
    """What the zero points take off ``x @ W.T``: each group's sum of ``x``
    times ``zero * scale``, ``[M, N]``."""
    gs = group_width(spec)
    groups = -(-spec.k // gs)
    sums = ops.sum(ops.reshape(_pad_last(x, groups * gs), (x.shape[0], groups, gs)), axis=-1)
    return ops.matmul(sums, ops.transpose(ops.cast(parts[2], "float32") * parts[1]))


def _int4_row(x, parts: list, spec):
    """``x @ W.T`` for one float32 row ``x`` ``[1, K]`` and int4 ``parts``, as
    one fused reduction over the packed codes (no float matrix formed)."""
    gs = group_width(spec)
    groups = -(-spec.k // gs)
    pairs = ops.reshape(_pad_last(x, groups * gs), (groups, gs // 2, 2))
    even, odd = pairs[..., 0], pairs[..., 1]
    packed = ops.reshape(_pad_last(parts[0], groups * gs // 2), (-1, groups, gs // 2))
    byte = ops.cast(packed, "float32")  # 16 * high + low, both signed nibbles
    high = ops.floor(byte * (1 / 16))
    low = byte - 16.0 * ops.floor((byte + 8.0) * (1 / 16))
    y = ops.sum((high * odd + low * even) * parts[1][..., None], axis=(1, 2))
    return (y[None, :] - _zero_offsets(x, parts, spec)) if spec.has_zero else y[None, :]


def int4_matrix(parts: list, spec):
    """The float32 int4 matrix from ``parts`` (codes, scale, [zero]) of any
    number of rows, zero-padded past ``K`` to whole groups."""
    gs = group_width(spec)
    groups = -(-spec.k // gs)
    packed = ops.reshape(_pad_last(parts[0], groups * gs // 2), (-1, groups, gs // 2))
    low = ops.right_shift(ops.left_shift(packed, 4), 4)  # sign-extended nibbles
    q = ops.stack([low, ops.right_shift(packed, 4)], axis=-1)  # even index low
    q = ops.cast(ops.reshape(q, (-1, groups, gs)), "float32")
    if spec.has_zero:
        q = q - ops.cast(parts[2], "float32")[..., None]
    return ops.reshape(q * parts[1][..., None], (-1, groups * gs))


def group_width(spec) -> int:
    """Group size as computed (one group of ``K`` when the group size is -1 or at
    least ``K``; an odd ``K`` is then padded by one)."""
    if spec.group_size == -1 or spec.group_size >= spec.k:
        return spec.k + spec.k % 2
    return spec.group_size


def _pad_last(x, width: int):
    extra = width - x.shape[-1]
    return x if extra == 0 else ops.pad(x, [[0, 0]] * (len(x.shape) - 1) + [[0, extra]])


@dataclass(frozen=True)
class RowMap:
    """How a projection's input becomes ``[M, K]`` rows (``K`` in the
    canonical order of the kernel's reduction axes) and how ``[M, N]``
    results go back to the layer's output layout."""

    in_perm: tuple[int, ...]
    kept: int  # number of leading (row) axes after ``in_perm``
    out_dims: tuple[int, ...]  # kernel output axis sizes, kernel order
    out_perm: tuple[int, ...]

    def rows(self, x):
        """``x`` as ``[M, K]``, and the shape of its row axes (for ``restore``)."""
        if self.in_perm != tuple(range(len(self.in_perm))):
            x = ops.transpose(x, self.in_perm)
        kept = tuple(x.shape[: self.kept])
        return ops.reshape(x, (math.prod(kept), -1)), kept

    def row_count(self, x) -> int | None:
        dims = [x.shape[i] for i in self.in_perm[: self.kept]]
        return None if any(d is None for d in dims) else math.prod(dims)

    def restore(self, y, kept_shape: tuple):
        y = ops.reshape(y, (*kept_shape, *self.out_dims))
        if self.out_perm != tuple(range(len(self.out_perm))):
            y = ops.transpose(y, self.out_perm)
        return y


@functools.cache
def einsum_input_order(equation: str) -> tuple[tuple[int, ...], int]:
    """The input axes of an einsum projection as rows (input order) then
    reduced (kernel order), and how many are rows."""
    operands, output = equation.split("->")
    source, kernel = operands.split(",")
    reduce = [c for c in kernel if c not in output]
    keep = [c for c in source if c not in reduce]
    return tuple(source.index(c) for c in keep + reduce), len(keep)


@functools.cache
def einsum_row_map(equation: str, kernel_shape: tuple) -> RowMap | None:
    """The ``RowMap`` of an einsum projection; None when inputs carry axes
    that are neither rows nor reduced (never so for KerasHub projections)."""
    operands, output = equation.split("->")
    source, kernel = operands.split(",")
    reduce = [c for c in kernel if c not in output]
    keep = [c for c in source if c not in reduce]
    if not set(reduce) <= set(source) or not set(keep) <= set(output) or "." in equation:
        return None
    in_perm, kept = einsum_input_order(equation)
    outs = [c for c in kernel if c in output]
    out_perm = tuple((keep + outs).index(c) for c in output)
    out_dims = tuple(kernel_shape[kernel.index(c)] for c in outs)
    return RowMap(in_perm, kept, out_dims, out_perm)


@functools.cache
def dense_row_map(rank: int, units: int) -> RowMap:
    return RowMap(tuple(range(rank)), rank - 1, (units,), tuple(range(rank)))
