"""Per-layer dispatch: what statistics an algorithm needs, and how it quantizes."""

from __future__ import annotations

from hubquant.calibrate.blocks import ActivationStats, HessianStats
from hubquant.plan import PlanEntry


def new_stats(entry: PlanEntry):
    k = entry.shape[1]
    if entry.algorithm == "gptq":
        return HessianStats(k)
    return ActivationStats(k)


def quantize_layer(layer, entry: PlanEntry, stats) -> None:
    """Compute the layer's quantized kernel from ``stats`` and hand it to its hook."""
    fm = layer._float_matrices()["kernel"]
    w = fm.to_matrix(getattr(layer, fm.attr))
    options = entry.algorithm_options or {}
    if entry.algorithm == "gptq":
        from hubquant.calibrate.gptq import gptq_quantize

        matrix = gptq_quantize(
            w, stats.hessian(), entry.mode, entry.group_size, entry.symmetric, **options
        )
        layer.quantize(entry.mode, values={"kernel": matrix})
        return
    from hubquant.calibrate.awq import awq_quantize

    matrix, input_scale = awq_quantize(
        w,
        stats.magnitude(),
        stats.gram(),
        entry.mode,
        entry.group_size,
        entry.symmetric,
        **options,
    )
    layer.quantize(entry.mode, values={"kernel": matrix, "kernel_input_scale": input_scale})
