"""AWQ: activation-aware scaling of input channels before rounding (Lin et al., 2023).

Input channels that carry large activations matter more, so their weights are
scaled up before quantization (``W' = W * s``) and the inputs scaled down
(``x / s``), which the layer keeps as a per-input-channel multiplier
(``kernel_input_scale = 1 / s``, folded into the dequantized kernel). The
scale is ``s = m^alpha`` (``m``: mean absolute input per channel, normalised
so that ``max(s) * min(s) = 1``), with ``alpha`` searched on a grid in
``[0, 1)`` for the smallest output error on the calibration inputs.
``alpha = 0`` is plain round-to-nearest, so the search never does worse there.

Output errors are measured through the inputs' Gram matrix ``X^T X``
(``||X D^T||^2 = trace(D X^T X D^T)``), so no activations are kept.
By default the scaled weights are then rounded by GPTQ on the Hessian of
the scaled inputs; otherwise, with ``clip``, each group's range is shrunk by
the ratio (1.0 down to 0.5) that minimises that group's output error
(``clip.py``).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from hubquant import quantizers
from hubquant.calibrate.calibration import default
from hubquant.calibrate.clip import output_clipped_int4
from hubquant.calibrate.gptq import gptq_quantize
from hubquant.quantizers import QuantizedMatrix

# Multiply-adds per grid point of the scale search (rows x K x K): wider
# matrices search on every n-th output row (``alpha`` is one number for the
# whole matrix, and each row's error is exact), e.g. 256 of mlp.down's 2048
# rows at K = 16384.
SEARCH_BUDGET = 1 << 36


def awq_quantize(
    w: np.ndarray,
    magnitude: np.ndarray,
    gram: np.ndarray,
    mode: str,
    group_size: int = 128,
    symmetric: bool = False,
    grid: int = default("awq", "grid"),
    clip: bool = default("awq", "clip"),
    gptq: bool = default("awq", "gptq"),
    scale: np.ndarray | None = None,
) -> tuple[QuantizedMatrix, np.ndarray]:
    """Codes of ``w * s`` and the input multiplier ``1 / s`` ``[K]``.

    ``magnitude``: mean ``|x|`` per input channel; ``gram``: ``X^T X / rows``.
    ``scale``: ``s`` already chosen (shared by a group, ``awq_group_scale``);
    searched for ``w`` alone when None. With ``gptq``, int4 codes of ``W * s``
    come from GPTQ on the scaled inputs' Hessian (columns by decreasing
    importance, static groups); otherwise from ``clip``'s search or plain
    rounding.
    """
    w = np.asarray(w, np.float32)
    if scale is None:
        scale = awq_group_scale([(w, mode, group_size, symmetric)], magnitude, gram, grid)
    s = np.asarray(scale, np.float32)
    scaled = w * s[None, :]
    if mode == "int8":
        matrix = quantizers.quantize_int8(scaled)
    elif gptq or clip:
        scaled_gram = gram / (s[:, None] * s[None, :])  # of the inputs x / s
        if gptq:
            matrix = gptq_quantize(
                scaled, 2 * scaled_gram, mode, group_size, symmetric, act_order=True
            )
        else:
            matrix = output_clipped_int4(scaled, scaled_gram, group_size, symmetric)
    else:
        matrix = quantizers.quantize_int4(scaled, group_size, symmetric)
    return matrix, (1.0 / s).astype(np.float32)


def awq_group_scale(
    layers: list[tuple[np.ndarray, str, int, bool]],
    magnitude: np.ndarray,
    gram: np.ndarray,
    grid: int = default("awq", "grid"),
) -> np.ndarray:
    """One scale ``s`` ``[K]`` for layers reading the same input: ``alpha``
    with the lowest summed output error. ``layers``: (w, mode, group_size,
    symmetric) each."""
    alphas = jnp.arange(grid, dtype=jnp.float32) / grid
    magnitude_j, gram_j = jnp.asarray(magnitude), jnp.asarray(gram)
    errors = 0.0
    for w, mode, group_size, symmetric in layers:
        bits = 8 if mode == "int8" else 4
        if mode == "int8":
            group_size, symmetric = -1, True
        gs = w.shape[1] if group_size == -1 else group_size
        errors = errors + _scale_errors(
            jnp.asarray(_search_rows(w), jnp.float32),
            magnitude_j,
            gram_j,
            alphas,
            gs=gs,
            symmetric=symmetric,
            bits=bits,
        )
    best = float(alphas[int(jnp.argmin(errors))])
    return np.asarray(_scales(magnitude_j, best), np.float32)


def _search_rows(w: np.ndarray) -> np.ndarray:
    n, k = w.shape
    step = max(1, -(-n * k * k // SEARCH_BUDGET))
    return w[::step]


def _scales(magnitude, alpha):
    s = jnp.maximum(magnitude, 1e-8) ** alpha
    s = jnp.maximum(s, 1e-4)
    return s / jnp.sqrt(jnp.max(s) * jnp.min(s))


def _fake_quant(w, gs: int, symmetric: bool, bits: int, ratio=1.0):
    """Round-to-nearest at min/max (times ``ratio``) per group, dequantized."""
    n, k = w.shape
    g = -(-k // gs)
    grouped = jnp.pad(w, ((0, 0), (0, g * gs - k))).reshape(n, g, gs)
    q, scale, zero, _ = quantizers._candidate(grouped, 1.0, ratio, symmetric, bits)
    deq = (q - zero[..., None]) * scale[..., None]
    return deq.reshape(n, g * gs)[:, :k]


@functools.partial(jax.jit, static_argnames=("gs", "symmetric", "bits"))
def _scale_errors(w, magnitude, gram, alphas, *, gs, symmetric, bits):
    """Output error (up to a constant factor) of each candidate ``alpha``."""

    def error(alpha):
        s = _scales(magnitude, alpha)
        d = _fake_quant(w * s[None, :], gs, symmetric, bits) / s[None, :] - w
        dg = jnp.matmul(d, gram, precision=lax.Precision.HIGHEST)
        return jnp.sum(dg * d)

    return lax.map(error, alphas)
