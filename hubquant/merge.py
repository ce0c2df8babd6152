"""Merging LoRA adapters into a quantized model without a stored float copy."""

from __future__ import annotations

from hubquant import keras_internals as internals
from hubquant.calibrate import blocks
from hubquant.calibrate.run import tokens_for
from hubquant.errors import HubquantError
from hubquant.layers.lora import lora_state
from hubquant.merge_float import merge_from_float
from hubquant.paths import backbone_of, layer_at
from hubquant.plan import Plan


def merge_lora(model, calibration=None, float_weights=None) -> Plan:
    """Fold every adapter on a hubquant layer into it, in place; the adapters are
    gone and the layers keep their mode, group size and symmetry. Returns the
    Plan as applied.

    Each layer's codes move on its own grid (scales and zero points kept, see
    ``merge_adapter``), so GPTQ's and AWQ's choices survive the merge. Given
    ``calibration`` (a ``Calibration`` or token ids ``[samples, seq_len]``),
    the codes of every adapted layer inside the blocks are chosen on that grid
    by GPTQ's sweep on its inputs, block by block, each block seeing the blocks
    before it merged.

    Given ``float_weights`` (the float preset the model was quantized from: a
    KerasHub preset name or folder, or a Hugging Face folder), each adapted
    layer is instead quantized afresh from ``W + A B * alpha / rank`` by its
    own rule (``merge_float.py``): exactly a fresh round-to-nearest, and GPTQ,
    AWQ or imatrix run again on ``calibration`` (default: the Plan's, text the
    float model generates where it names no files). Only the adapted matrices
    are read from the preset.
    """
    backbone = backbone_of(model)
    plan = getattr(backbone, "hubquant_plan", None)
    adapted = {} if plan is None else lora_state(backbone)
    if not adapted:
        raise HubquantError(
            f"{type(model).__name__} has no LoRA adapter on a hubquant layer to merge: "
            "quantize, call backbone.enable_lora(rank) and train first."
        )
    layers = {a: es[0] for a, es in plan.layers().items() if a in adapted}
    if float_weights is not None:
        merge_from_float(model, plan, layers, str(float_weights), calibration)
    else:
        merged = (
            set() if calibration is None else _merge_calibrated(model, plan, layers, calibration)
        )
        for attr in layers.keys() - merged:
            layer_at(backbone, attr).merge_adapter()
    internals.note_lora_layers(backbone, [], 0)
    return plan


def _merge_calibrated(model, plan: Plan, layers: dict, calibration) -> set[str]:
    """Merge the adapted layers inside the blocks, block by block, each on the
    ``X^T X`` of its inputs (the blocks before it already merged); return
    their attrs."""
    backbone = backbone_of(model)
    inside = {a: e for a, e in layers.items() if e.block is not None}
    if not inside:
        return set()
    tokens = tokens_for(model, plan, calibration)
    hessians = blocks.each_with_stats(backbone, plan, inside, tokens, _hessian_stats)
    for attr, stats in hessians:
        layer_at(backbone, attr).merge_adapter(hessian=stats.hessian())
    return set(inside)


def _hessian_stats(entry) -> blocks.HessianStats:
    return blocks.HessianStats(entry.shape[1])
