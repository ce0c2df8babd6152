"""LoRA adapters on a quantized model: kept across save and load, and merged
into the quantized layers without a stored float copy.

``backbone.enable_lora(rank)`` (KerasHub's call) works on hubquant's
projections in every mode (``layers/dense.py``). A saved artefact records, per
adapted layer, its rank and alpha, and the adapters' weights are saved beside
the codes, so a reload is bitwise the model that was saved.
"""

from __future__ import annotations

import dataclasses

from hubquant import keras_internals as internals
from hubquant.calibrate.run import calibrate_plan
from hubquant.errors import ArtefactError, HubquantError
from hubquant.paths import backbone_of, layer_at
from hubquant.plan import Plan

MAX_RANK = 1 << 14


def lora_state(backbone) -> dict[str, list]:
    """``{attr: [rank, alpha]}`` for each planned layer with an adapter."""
    state = {}
    for attr in backbone.hubquant_plan.layers():
        layer = layer_at(backbone, attr)
        if getattr(layer, "lora_enabled", False):
            state[attr] = [layer.lora_rank, layer.lora_alpha]
    return state


def restore_lora(backbone, state: object) -> None:
    """Re-create the adapters ``state`` records (from a file: checked first), the
    rest of the backbone frozen as ``enable_lora`` leaves it."""
    if not state:
        return
    if not isinstance(state, dict):
        raise ArtefactError(f"the saved LoRA state is {type(state).__name__}; expected a mapping.")
    planned = backbone.hubquant_plan.layers()
    for attr, value in state.items():
        if attr not in planned or not _is_rank_alpha(value):
            raise ArtefactError(
                f"the saved LoRA state has {attr!r}: {value!r}; expected a planned layer's "
                f"path and [rank, alpha] (rank 1 to {MAX_RANK})."
            )
    for layer in internals.all_layers(backbone):
        layer.trainable = False
    for attr, (rank, alpha) in state.items():
        layer = layer_at(backbone, attr)
        layer.trainable = True
        layer.enable_lora(rank, alpha)
    internals.note_lora_layers(backbone, [layer_at(backbone, a) for a in state], rank)


def _is_rank_alpha(value) -> bool:
    ok = isinstance(value, list) and len(value) == 2 and type(value[0]) is int
    return ok and 0 < value[0] <= MAX_RANK and type(value[1]) in (int, float)


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
        plan = dataclasses.replace(plan, notes=calibrate_plan(model, sub, calibration).notes)
    internals.note_lora_layers(backbone, [], 0)
    return plan
