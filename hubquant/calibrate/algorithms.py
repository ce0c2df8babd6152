"""Per-layer dispatch: what statistics an algorithm needs, and how it quantizes."""

from __future__ import annotations

import numpy as np

from hubquant.calibrate.blocks import ActivationStats, HessianStats
from hubquant.plan import PlanEntry
from hubquant.quantizers import QuantizedMatrix, quantize


def new_stats(entry: PlanEntry):
    k = entry.shape[1]
    if entry.algorithm in ("gptq", "imatrix"):
        return HessianStats(k)
    return ActivationStats(k)


def quantize_layer(layer, entry: PlanEntry, stats) -> None:
    """Compute the layer's quantized kernel from ``stats`` and hand it to its hook."""
    fm = layer._float_matrices()["kernel"]
    matrix, input_scale = quantize_matrix(fm.to_matrix(getattr(layer, fm.attr)), entry, stats)
    values = {"kernel": matrix}
    if input_scale is not None:
        values["kernel_input_scale"] = input_scale
    layer.quantize(entry.mode, values=values)


def quantize_matrix(
    w: np.ndarray, entry: PlanEntry, stats
) -> tuple[QuantizedMatrix, np.ndarray | None]:
    """Codes of ``w`` ``[N, K]`` by the entry's algorithm, and (AWQ) the input
    multiplier ``[K]``. ``stats``: ``hessian()`` for GPTQ and imatrix;
    ``magnitude()`` and ``gram()`` for AWQ."""
    options = entry.algorithm_options or {}
    if entry.algorithm == "imatrix" and entry.mode == "int4":  # output-aware clipping
        from hubquant.calibrate.clip import output_clipped_int4

        return output_clipped_int4(w, stats.hessian(), entry.group_size, entry.symmetric), None
    if entry.algorithm == "imatrix":
        return quantize(w, entry.mode), None
    if entry.algorithm == "gptq":
        from hubquant.calibrate.gptq import gptq_quantize

        matrix = gptq_quantize(
            w, stats.hessian(), entry.mode, entry.group_size, entry.symmetric, **options
        )
        return matrix, None
    from hubquant.calibrate.awq import awq_quantize

    return awq_quantize(
        w,
        stats.magnitude(),
        stats.gram(),
        entry.mode,
        entry.group_size,
        entry.symmetric,
        **options,
    )
