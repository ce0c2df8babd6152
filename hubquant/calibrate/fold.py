"""AWQ scales folded into the norm that feeds a group of projections.

A recipe role may name ``input_norm``: the block's norm layer whose output is
exactly the projection's input. When every role reading that norm in a block
is planned with AWQ, they share one scale ``s`` (searched on all their
weights together); the norm's output is divided by ``s`` and each projection
quantizes ``W * s`` with no input scale left in the layer, so the saved model
is an ordinary one that exports to Hugging Face.

The norm's form is found by probing it, not from its class: each per-channel
weight is either multiplicative (``y = n(x) * (alpha + w)``, ``alpha`` 0 or 1,
Gemma's ``1 + scale``) or additive (a bias). Dividing the output by ``s`` sets
``w' = (alpha + w) / s - alpha`` and ``b' = b / s``. A ``1 + scale`` norm held
in a 16-bit dtype is not folded: storing ``(1 + w) / s - 1`` there loses most
of the scale's precision; its layers keep the scale as an input scale.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from hubquant.layers.sharding import to_host


@dataclass(frozen=True)
class NormForm:
    """How to divide a norm layer's output by a per-channel scale."""

    scale: object  # the multiplicative weight variable
    alpha: float  # 0: y = n * w; 1: y = n * (1 + w)
    bias: object | None  # the additive weight variable, if any

    def divide_by(self, s: np.ndarray) -> str:
        w = to_host(self.scale).astype(np.float32)
        self.scale.assign((w + self.alpha) / s - self.alpha)
        if self.bias is not None:
            b = to_host(self.bias).astype(np.float32)
            self.bias.assign(b / s)
        return ""


def norm_form(norm, path: str) -> NormForm | str:
    """The norm's form, or why its output cannot be divided by a scale."""
    weights = [v for v in norm.weights if len(v.shape) == 1]
    if not weights or len(weights) > 2:
        return f"{path} has {len(weights)} per-channel weights (expected a scale and maybe a bias)"
    x = np.random.default_rng(0).standard_normal((4, int(weights[0].shape[0]))).astype("float32")
    slopes = {id(v): _slope(norm, v, x) for v in weights}
    additive = [v for v in weights if np.allclose(slopes[id(v)], 1.0, atol=2e-2)]
    scales = [v for v in weights if all(v is not a for a in additive)]
    if len(scales) != 1:
        return f"{path}: found no per-channel weight that multiplies the normalised input"
    scale, bias = scales[0], (additive[0] if additive else None)
    alpha = _alpha(norm, scale, bias, x, slopes[id(scale)])
    if alpha is None:
        return f"{path}: its output is neither n(x) * w nor n(x) * (1 + w)"
    if alpha and "float32" not in str(scale.dtype):
        return (
            f"{path} computes n(x) * (1 + w) with w in {scale.dtype}: folding would lose precision"
        )
    return NormForm(scale, alpha, bias)


def _run(norm, x) -> np.ndarray:
    return to_host(norm(x)).astype(np.float32)


def _with(var, value, fn):
    saved = to_host(var)
    try:
        var.assign(np.broadcast_to(np.asarray(value, np.float32), var.shape))
        return fn()
    finally:
        var.assign(saved)


def _slope(norm, var, x) -> np.ndarray:
    """How the output moves per unit of ``var`` (all ones: a bias)."""
    at0 = _with(var, 0.0, lambda: _run(norm, x))
    at1 = _with(var, 1.0, lambda: _run(norm, x))
    return at1 - at0


def _alpha(norm, scale, bias, x, slope) -> float | None:
    """``alpha`` in ``y = n * (alpha + w) + b``: 0 or 1, else None."""
    offset = 0.0 if bias is None else to_host(bias).astype(np.float32)
    at0 = _with(scale, 0.0, lambda: _run(norm, x)) - offset
    big = np.abs(slope) > 0.1
    if not big.any():
        return None
    alpha = float(np.median(at0[big] / slope[big]))
    rounded = round(alpha)
    return float(rounded) if rounded in (0, 1) and abs(alpha - rounded) < 2e-2 else None


def fold_groups(entries_by_norm: dict, stats: dict) -> dict[str, list[str]]:
    """Norm path -> attributes of the layers sharing its scale, for norms whose
    every reader in this block is an AWQ projection still to quantize (one
    with statistics in ``stats``)."""
    groups = {}
    for norm, readers in entries_by_norm.items():
        awq = all(
            e.mode != "none" and e.algorithm == "awq" and e.matrix == "kernel" and e.attr in stats
            for e in readers
        )
        if awq:
            groups[norm] = [e.attr for e in readers]
    return groups


def divide_rows(layer, s: np.ndarray) -> str:
    """Divide a float projection's output channels (and bias) by ``s``; the
    reason it cannot be done, or "" once done."""
    if getattr(layer, "_is_quantized", False):
        return f"{layer.path} is already quantized"
    layout = layer.layout
    if layout.n != len(s):
        return f"{layer.path} has {layout.n} output channels, the layer reads {len(s)}"
    bias = getattr(layer, "bias", None)
    if bias is not None and tuple(bias.shape) != (len(s),):
        return f"{layer.path} has a bias of shape {tuple(bias.shape)}"
    w = layout.to_matrix(layer._kernel) / s[:, None]
    layer._kernel.assign(layout.from_matrix(w))
    if bias is not None:
        bias.assign(to_host(bias).astype(np.float32) / s)
    return ""
