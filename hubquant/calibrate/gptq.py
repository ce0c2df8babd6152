"""GPTQ: quantize a matrix column by column, pushing each column's rounding
error onto the columns not yet quantized, weighted by the inverse Hessian of
the layer's inputs (Frantar et al., 2022).

The sweep runs as one compiled JAX program: a scan over blocks of columns, a
loop over the columns inside a block (rank-1 updates of the block only), and
one block-level matrix product that carries the block's errors to every later
column (the "lazy batch" update).

Group scales and zero points are hubquant's round-to-nearest ones
(docs/format.md: the weighted clipping search, each input channel weighted
by the Hessian's diagonal, mean ``x^2``, as ``imatrix`` does; with
``search=False`` plain min/max, as in the reference), computed from the
error-updated weights when the sweep reaches a group's first column. With
``act_order`` (columns visited by decreasing Hessian diagonal) the groups are
*static*: each group's parameters come from the original weights before the
sweep, so the stored codes stay in hubquant's natural group layout; the
codes are permuted back afterwards. Per-channel int4 (``group_size: -1``) and
int8 are static too (one scale per row, as in the reference).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from scipy.linalg import lapack

from hubquant import quantizers
from hubquant.calibrate.calibration import default
from hubquant.layers.sharding import rows_split, to_host
from hubquant.quantizers import QuantizedMatrix


def gptq_quantize(
    w: np.ndarray,
    hessian: np.ndarray,
    mode: str,
    group_size: int = 128,
    symmetric: bool = False,
    damping: float = 0.01,
    act_order: bool = default("gptq", "act_order"),
    block_size: int = 128,
    search: bool = True,
) -> QuantizedMatrix:
    """GPTQ codes and scales for ``w`` ``[N, K]`` given ``hessian`` ``[K, K]``
    (``2 X^T X / rows`` of the layer's inputs), in hubquant's storage format."""
    w = np.array(w, np.float32)
    n, k = w.shape
    bits = 8 if mode == "int8" else 4
    if mode == "int8":
        group_size, symmetric = -1, True
    gs = k if group_size == -1 else group_size
    static = act_order or group_size == -1
    h, w = _without_dead_columns(np.asarray(hessian, np.float32), w)
    search = search and bits == 4
    importance = np.diag(h).astype(np.float32)  # mean x^2 per input: imatrix's weighting
    col_scale, col_zero = (
        _static_params(w, gs, symmetric, bits, search, importance) if static else (None, None)
    )
    codes, scale, zero = _sweep_in_order(
        w,
        h,
        col_scale,
        col_zero,
        importance,
        act_order,
        damping,
        block_size,
        group=gs,
        symmetric=symmetric,
        bits=bits,
        static=static,
        search=search,
    )
    if static:
        groups = quantizers.num_groups(k, group_size)
        scale = col_scale[:, ::gs][:, :groups]
        zero = col_zero[:, ::gs][:, :groups]
    else:
        groups = quantizers.num_groups(k, group_size)
        scale, zero = np.asarray(scale)[:, :groups], np.asarray(zero)[:, :groups]
    if mode == "int8":
        return QuantizedMatrix(codes, scale[:, 0].astype(np.float32), None)
    zero = None if symmetric else zero.astype(np.int8)
    return QuantizedMatrix(quantizers.pack_int4(codes), scale.astype(np.float32), zero)


def gptq_on_grid(
    w: np.ndarray,
    hessian: np.ndarray,
    kept: QuantizedMatrix,
    mode: str,
    group_size: int,
    damping: float = default("gptq", "damping"),
    act_order: bool = default("gptq", "act_order"),
    block_size: int = default("gptq", "block_size"),
) -> QuantizedMatrix:
    """Codes for ``w`` ``[N, K]`` on ``kept``'s grid (its scales and zero points,
    unchanged), each column's rounding error pushed onto the columns not yet
    rounded as GPTQ does: the output error ``X (W - Q)`` a merge adds stays
    small where plain rounding to the nearest level would add a full rounding
    of its own. Returns ``kept``'s scales with the new codes."""
    w = np.array(w, np.float32)
    n, k = w.shape
    bits = 8 if mode == "int8" else 4
    gs = k if mode == "int8" or group_size == -1 else group_size
    scale = kept.scale[:, None] if mode == "int8" else kept.scale
    zero = np.zeros_like(scale) if kept.zero is None else kept.zero.astype(np.float32)
    col_scale = np.repeat(scale, gs, axis=1)[:, :k]
    col_zero = np.repeat(zero, gs, axis=1)[:, :k]
    h = _live(np.asarray(hessian, np.float32))
    codes, _, _ = _sweep_in_order(
        w,
        h,
        col_scale,
        col_zero,
        None,
        act_order,
        damping,
        block_size,
        group=gs,
        symmetric=kept.zero is None,
        bits=bits,
        static=True,
        search=False,
    )
    if mode == "int8":
        return QuantizedMatrix(codes, kept.scale, None)
    return QuantizedMatrix(quantizers.pack_int4(codes), kept.scale, kept.zero)


def _sweep_in_order(w, h, col_scale, col_zero, importance, act_order, damping, block_size, **how):
    """The sweep over ``w`` ``[N, K]`` in act order (or natural order), padded
    to whole blocks: codes ``[N, K]`` int8 in natural order, and the sweep's
    group scales and zeros (non-static only)."""
    n, k = w.shape
    perm = np.argsort(-np.diag(h), kind="stable") if act_order else np.arange(k)
    block = (
        block_size
        if how["static"]
        else max(how["group"], -(-block_size // how["group"]) * how["group"])
    )
    kp = -(-k // block) * block
    if act_order:
        h = h[np.ix_(perm, perm)]
    hinv = np.eye(kp, dtype=np.float32)
    hinv[:k, :k] = inverse_cholesky(h, damping)
    del h
    wp = np.zeros((n, kp), np.float32)
    wp[:, :k] = w[:, perm]
    cs, cz = np.ones((n, kp), np.float32), np.zeros((n, kp), np.float32)
    channel = np.ones(kp, np.float32)
    if importance is not None:
        channel[:k] = importance[perm]
    if how["static"]:
        cs[:, :k], cz[:, :k] = col_scale[:, perm], col_zero[:, perm]
    q, scale, zero = _sweep(  # rows are independent: each device sweeps its own
        rows_split(wp),
        hinv,  # NumPy: replicated to every device
        rows_split(cs),
        rows_split(cz),
        channel,
        block=block,
        **how,
    )
    codes = np.empty((n, k), np.int8)
    codes[:, perm] = to_host(q)[:, :k].astype(np.int8)
    return codes, to_host(scale), to_host(zero)


def _without_dead_columns(h: np.ndarray, w: np.ndarray):
    """Inputs that were always zero: their weights cannot matter; set them to
    zero and give the Hessian a unit diagonal there, as the reference does."""
    w[:, np.diag(h) == 0] = 0.0
    return _live(h), w


def _live(h: np.ndarray) -> np.ndarray:
    """``h`` with a unit diagonal where an input was always zero (a copy if so)."""
    dead = np.diag(h) == 0
    if dead.any():
        h = h.copy()  # the caller's Hessian stays as it was
        h[dead, dead] = 1.0
    return h


def inverse_cholesky(h: np.ndarray, damping: float) -> np.ndarray:
    """Upper Cholesky factor ``U`` of ``(H + damping * mean(diag H) * I)^-1``
    (``U^T U`` is that inverse), float32; float64 where float32 breaks down.

    With R the order reversal, ``R H R = L L^T`` gives ``H^-1 = U^T U`` for
    the upper triangular ``U = R L^-1 R``: one factorisation and one
    triangular inverse (LAPACK ``potrf`` and ``trtri``, in place), so the
    work holds one copy of ``H`` besides the caller's.
    """
    for dtype in (np.float32, np.float64):
        u = _inverse_cholesky(h, damping, dtype)
        if u is not None:
            return u.astype(np.float32, copy=False)
    raise np.linalg.LinAlgError("the damped Hessian is not positive definite")


def _inverse_cholesky(h: np.ndarray, damping: float, dtype) -> np.ndarray | None:
    potrf, trtri = lapack.get_lapack_funcs(("potrf", "trtri"), dtype=np.dtype(dtype))
    a = np.array(h[::-1, ::-1], dtype)  # C order: its transpose is the same matrix in F order
    diagonal = np.einsum("ii->i", a)
    diagonal += damping * float(np.mean(diagonal))
    lower, info = potrf(a.T, lower=1, overwrite_a=1, clean=1)
    if info == 0:
        lower, info = trtri(lower, lower=1, overwrite_c=1)
    if info != 0 or not np.all(np.isfinite(lower)):
        return None
    return lower[::-1, ::-1]


def _group_params(w, symmetric: bool, bits: int, search: bool, channel=1.0):
    """Scale and zero point per group of ``w`` ``[..., gs]``; ``channel``: each
    input's weight in the clip search (mean ``x^2``, as ``imatrix``)."""
    if search:
        _, scale, zero = quantizers._grid_chunk(
            w, channel, symmetric=symmetric, bits=bits, ratios=quantizers.CLIP_RATIOS
        )
        return scale, zero.astype(w.dtype)
    _, scale, zero, _ = quantizers._candidate(w, 1.0, 1.0, symmetric, bits)
    return scale, zero


def _static_params(w: np.ndarray, gs: int, symmetric: bool, bits: int, search: bool, importance):
    """Per-column scale and zero ``[N, K]`` from each group of the original ``w``."""
    n, k = w.shape
    g = -(-k // gs)
    padded = np.zeros((n, g * gs), np.float32)
    padded[:, :k] = w
    channel = np.ones(g * gs, np.float32)
    channel[:k] = importance
    scale, zero = _group_params(
        jnp.asarray(padded.reshape(n, g, gs)),
        symmetric,
        bits,
        search,
        jnp.asarray(channel.reshape(1, g, gs)),
    )
    per_col = np.repeat(np.asarray(scale), gs, axis=1)[:, :k]
    return per_col, np.repeat(np.asarray(zero), gs, axis=1)[:, :k]


@functools.partial(
    jax.jit, static_argnames=("block", "group", "symmetric", "bits", "static", "search")
)
def _sweep(w, hinv, col_scale, col_zero, channel, *, block, group, symmetric, bits, static, search):
    """Codes ``[N, Kp]`` and (non-static) group scales and zeros ``[N, Kp / group]``."""
    n, kp = w.shape
    top = 2 ** (bits - 1) - 1
    low = -top - 1 if bits == 4 else -top
    per_block = 1 if static else block // group

    def column(i, carry, hb, s1, z1, i1):
        w1, q1, e1, s, z, sg, zg = carry
        if static:
            s, z = s1[:, i], z1[:, i]
        else:

            def fresh(_):
                wg = lax.dynamic_slice(w1, (0, i), (n, group))[:, None, :]
                cg = lax.dynamic_slice(channel, (i1 + i,), (group,))[None, None, :]
                scale, zero = _group_params(wg, symmetric, bits, search, cg)
                return scale[:, 0], zero[:, 0]

            s, z = lax.cond(i % group == 0, fresh, lambda _: (s, z), None)
            sg, zg = sg.at[:, i // group].set(s), zg.at[:, i // group].set(z)
        x = w1[:, i]
        q = jnp.clip(jnp.round(x / s) + z, low, top)
        err = (x - (q - z) * s) / hb[i, i]
        w1 = w1 - err[:, None] * hb[i][None, :]
        return w1, q1.at[:, i].set(q), e1.at[:, i].set(err), s, z, sg, zg

    def block_step(w, b):
        i1 = b * block
        w1 = lax.dynamic_slice(w, (0, i1), (n, block))
        hb = lax.dynamic_slice(hinv, (i1, i1), (block, block))
        s1 = lax.dynamic_slice(col_scale, (0, i1), (n, block))
        z1 = lax.dynamic_slice(col_zero, (0, i1), (n, block))
        zeros = jnp.zeros((n, block), w.dtype)
        ones = jnp.ones((n,), w.dtype)
        grp = jnp.zeros((n, per_block), w.dtype)
        init = (w1, zeros, zeros, ones, jnp.zeros_like(ones), grp, grp)
        body = functools.partial(column, hb=hb, s1=s1, z1=z1, i1=i1)
        _, q1, e1, _, _, sg, zg = lax.fori_loop(0, block, body, init)
        rows = lax.dynamic_slice(hinv, (i1, 0), (block, kp))
        # Later columns take the block's errors; earlier ones see zeros (Hinv
        # is upper triangular) and the block's own columns are never read again.
        w = w - jnp.matmul(e1, rows, precision=lax.Precision.HIGHEST)
        return w, (q1, sg, zg)

    _, (q, sg, zg) = lax.scan(block_step, w, jnp.arange(kp // block))
    q = jnp.transpose(q, (1, 0, 2)).reshape(n, kp)
    sg = jnp.transpose(sg, (1, 0, 2)).reshape(n, -1)
    zg = jnp.transpose(zg, (1, 0, 2)).reshape(n, -1)
    return q, sg, zg
