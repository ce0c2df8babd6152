"""Merging LoRA adapters into a quantized model without a stored float copy."""

from __future__ import annotations

from hubquant import keras_internals as internals
from hubquant.calibrate import blocks
from hubquant.calibrate.run import tokens_for
from hubquant.errors import HubquantError
from hubquant.layers.lora import lora_state
from hubquant.paths import backbone_of, layer_at
from hubquant.plan import Plan


def merge_lora(model, calibration=None) -> Plan:
    """Fold every adapter on a hubquant layer into it, in place; the adapters are
    gone and the layers keep their mode, group size and symmetry. Returns the
    Plan as applied.

    Each layer's codes move on its own grid (scales and zero points kept, see
    ``merge_adapter``), so GPTQ's and AWQ's choices survive the merge. Given
    ``calibration`` (a ``Calibration`` or token ids ``[samples, seq_len]``),
    the codes of every adapted layer inside the blocks are chosen on that grid
    by GPTQ's sweep on its inputs, block by block, each block seeing the blocks
    before it merged.
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
    merged = set() if calibration is None else _merge_calibrated(model, plan, layers, calibration)
    for attr in layers:
        if attr not in merged:
            layer_at(backbone, attr).merge_adapter()
    internals.note_lora_layers(backbone, [], 0)
    return plan


def _merge_calibrated(model, plan: Plan, layers: dict, calibration) -> set[str]:
    """Merge the adapted layers inside the blocks, block by block, each on the
    ``X^T X`` of its inputs (the blocks before it already merged); return
    their attrs."""
    backbone = backbone_of(model)
    tokens = tokens_for(model, plan, calibration)
    by_block: dict[int, list[str]] = {}
    for attr, entry in layers.items():
        if entry.block is not None:
            by_block.setdefault(entry.block, []).append(attr)
    if not by_block:
        return set()
    for index, block, inputs in blocks.walk(backbone, plan, tokens, max(by_block)):
        attrs = by_block.get(index, [])
        stats = {a: blocks.HessianStats(layers[a].shape[1]) for a in attrs}
        with blocks.recording({a: layer_at(backbone, a) for a in attrs}, stats):
            inputs.feed(block, index)
        for attr in attrs:
            layer_at(backbone, attr).merge_adapter(hessian=stats[attr].hessian())
    return {a for attrs in by_block.values() for a in attrs}
