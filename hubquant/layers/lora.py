"""LoRA adapters on quantized layers: the checks and the factors' variables."""

from __future__ import annotations

import keras

from hubquant.errors import HubquantError


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
