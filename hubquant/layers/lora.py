"""LoRA adapters on quantized layers: the checks, the factors' variables, and
the adapters a saved backbone records (``{attr: [rank, alpha]}``) and restores.

``backbone.enable_lora(rank)`` (KerasHub's call) works on hubquant's
projections in every mode (``layers/dense.py``); the adapters' weights are
saved beside the codes, so a reload is bitwise the model that was saved.
"""

from __future__ import annotations

import math

import keras

from hubquant import keras_internals as internals
from hubquant.errors import ArtefactError, HubquantError
from hubquant.paths import layer_at


def check_rank(layer, rank) -> None:
    """One clear line for a rank that is not a positive integer, or a second call."""
    if getattr(layer, "lora_enabled", False):
        raise HubquantError(
            f"layer '{layer.path}': LoRA is already enabled (rank {layer.lora_rank}); "
            "it can be enabled once per layer."
        )
    if type(rank) is not int or rank <= 0:
        raise HubquantError(
            f"layer '{layer.path}': LoRA rank must be a positive integer. Received: rank={rank!r}"
        )


def add_factor(layer, which: str, shape: tuple, initializer):
    """``lora_kernel_a`` or ``lora_kernel_b``: float32, trainable, as Keras makes them."""
    return layer.add_weight(
        name=f"lora_kernel_{which}",
        shape=shape,
        initializer=keras.initializers.get(initializer),
        dtype="float32",
        regularizer=getattr(layer, "kernel_regularizer", None),
    )


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
        layer = layer_at(backbone, attr) if attr in planned else None
        if layer is None or not _fits(layer, value):
            raise ArtefactError(
                f"the saved LoRA state has {attr!r}: {value!r}; expected a planned "
                "projection's path and [rank, alpha] (rank at most the projection's "
                "smaller side, alpha a finite number)."
            )
    for layer in internals.all_layers(backbone):
        layer.trainable = False
    for attr, (rank, alpha) in state.items():
        layer = layer_at(backbone, attr)
        layer.trainable = True
        layer.enable_lora(rank, alpha)
    ranks = {rank for rank, _ in state.values()}
    if len(ranks) == 1:  # KerasHub's adapter files hold one rank
        internals.note_lora_layers(backbone, [layer_at(backbone, a) for a in state], ranks.pop())


def _fits(layer, value) -> bool:
    """``[rank, alpha]`` a projection can take (a file's size checked before allocating)."""
    if not hasattr(layer, "merge_adapter") or not isinstance(value, list) or len(value) != 2:
        return False
    rank, alpha = value
    layout = layer.layout
    ok_rank = type(rank) is int and 0 < rank <= min(layout.n, layout.k)
    return ok_rank and type(alpha) in (int, float) and math.isfinite(alpha)
