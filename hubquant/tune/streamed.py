"""A preset as ``tune`` reads it: never whole in float.

The model is built from the preset's config with its planned matrices left
on disk (stream.py); those outside the blocks (the token table, an untied LM
head) are read once, as every window's forward and backward pass needs
them, and each block's are read when the block runs (blockwise.py) and
dropped after. Everything else (norms, biases) is small and read at once.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from hubquant import keras_internals as internals
from hubquant.paths import backbone_of, layer_at
from hubquant.plan import Plan, PlanEntry


@dataclass
class Streamed:
    """A preset's float model, its planned matrices on disk until read."""

    model: object
    plan: Plan  # every matrix tune may quantize (tune's own config)
    preset: str

    def variable(self, entry: PlanEntry):
        """The float variable of ``entry``'s matrix (unset while on disk)."""
        layer = layer_at(backbone_of(self.model), entry.attr)
        return getattr(layer, layer._float_matrices()[entry.matrix].attr)

    def read(self, entry: PlanEntry):
        """``entry``'s float value as stored: held, or read from disk."""
        variable = self.variable(entry)
        if not internals.is_unset(variable):
            return variable.value
        layer = layer_at(backbone_of(self.model), entry.attr)
        return np.asarray(layer.hubquant_later[entry.matrix].read())

    def to_matrix(self, entry: PlanEntry, value) -> np.ndarray:
        """``value`` (stored layout) as the ``[N, K]`` matrix: float32, but a
        token table as it is (already ``[N, K]``; ``damage_row`` converts a
        block of rows at a time, so a large table is never copied whole)."""
        if entry.matrix == "embeddings":
            return np.asarray(value)
        layer = layer_at(backbone_of(self.model), entry.attr)
        return np.asarray(layer._float_matrices()[entry.matrix].to_matrix(value), np.float32)


def open_streamed(preset: str, config, recipe=None) -> Streamed:
    """``preset``'s model, every matrix ``config`` plans left on disk but
    those outside the blocks, which are read now."""
    from hubquant import stream

    pending = stream.prepare(preset, config, recipe)
    model = stream.read_floats_later(pending)
    backbone = backbone_of(model)
    for attr in {e.attr for e in pending.plan.entries if e.block is None}:
        stream.read_now(layer_at(backbone, attr))
    return Streamed(model, pending.plan, str(pending.loader.preset))
