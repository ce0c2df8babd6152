"""Merging LoRA adapters into a quantized model without a stored float copy."""

from __future__ import annotations

import dataclasses

from hubquant import keras_internals as internals
from hubquant.calibrate.run import calibrate_plan
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
    GPTQ and imatrix layers are instead calibrated again on the merged weights.
    """
    backbone = backbone_of(model)
    plan = getattr(backbone, "hubquant_plan", None)
    adapted = {} if plan is None else lora_state(backbone)
    if not adapted:
        raise HubquantError(
            f"{type(model).__name__} has no LoRA adapter on a hubquant layer to merge: "
            "quantize, call backbone.enable_lora(rank) and train first."
        )
    layers = {a: es for a, es in plan.layers().items() if a in adapted}
    again = set()
    if calibration is not None:
        again = {a for a, es in layers.items() if es[0].algorithm in ("gptq", "imatrix")}
    for attr in layers:
        layer = layer_at(backbone, attr)
        if attr in again:
            layer.unquantize_with_adapter()
        else:
            layer.merge_adapter()
    if again:
        sub = dataclasses.replace(plan, entries=tuple(e for e in plan.entries if e.attr in again))
        applied = calibrate_plan(model, sub, calibration)
        done = {(e.attr, e.matrix): e for e in applied.entries}
        entries = tuple(done.get((e.attr, e.matrix), e) for e in plan.entries)
        plan = dataclasses.replace(plan, entries=entries, notes=applied.notes)
    internals.note_lora_layers(backbone, [], 0)
    object.__setattr__(backbone, "hubquant_plan", plan)
    return plan
