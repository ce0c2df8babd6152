"""Turn planned layers into hubquant layers, quantize them, or rebuild them.

A planned layer keeps its identity: hubquant changes its class in place to the
matching hubquant subclass. Its path, its variables (so the float weights are
carried across exactly), its place in the functional graph and every attribute
that refers to it stay as they were. Quantizing then goes through the layer's
own ``quantize()`` hook.
"""

from __future__ import annotations

import keras
from keras.dtype_policies import QuantizedDTypePolicy

from hubquant.layers import MatrixSpec
from hubquant.layers.registry import class_for
from hubquant.plan import Plan, PlanEntry


def swap_layers(backbone, plan: Plan) -> None:
    """Give every planned layer its hubquant class and specs; outputs unchanged."""
    for attr, entries in plan.layers().items():
        _adopt(layer_at(backbone, attr), entries)


def quantize_layers(backbone, plan: Plan, on_layer=None) -> None:
    """Run each swapped layer's ``quantize()`` hook as the Plan says."""
    for attr, entries in plan.layers().items():
        layer = layer_at(backbone, attr)
        layer.quantize(entries[0].mode)
        if on_layer is not None:
            on_layer(entries)


def build_skeleton(backbone, plan: Plan) -> None:
    """Re-create planned layers directly in quantized form, before weights load."""
    for attr, entries in plan.layers().items():
        layer = layer_at(backbone, attr)
        _adopt(layer, entries)
        layer._tracker.unlock()
        try:
            for name in _matrix_variable_attrs(layer, entries):
                layer._drop_variable(name)
            layer.quantized_build(None, entries[0].mode)
            layer._build_float_matrices(entries[0].source_dtype)
        finally:
            layer._tracker.lock()
        layer._is_quantized = True
        layer.dtype_policy = QuantizedDTypePolicy(entries[0].mode, entries[0].source_dtype)


def layer_at(backbone, attr: str):
    """The layer at a Plan entry's attribute path from the backbone."""
    obj = backbone
    for part in attr.split("."):
        obj = obj[int(part)] if part.isdigit() else getattr(obj, part)
    return obj


def _adopt(layer, entries: list[PlanEntry]) -> None:
    cls = class_for(entries[0].layer, layer)
    if type(layer) is not cls:
        layer.__class__ = cls
        # Keras binds wrapped ``build``/``quantize`` on each instance; use ours.
        for name in ("build", "quantize"):
            layer.__dict__.pop(name, None)
    layer.hubquant_specs = {
        e.matrix: MatrixSpec(
            e.mode,
            e.group_size,
            e.symmetric,
            *e.shape,
            input_scale=e.holds_input_scale,
            input_scale_rows=_input_scale_rows(e),
        )
        for e in entries
    }
    layer.hubquant_source_dtype = entries[0].source_dtype
    if entries[0].matrix == "kernel":
        layer._hubquant_kernel_shape = entries[0].kernel_shape
    if entries[0].is_bank:
        layer.hubquant_bank_shapes = {e.matrix: e.kernel_shape for e in entries}


def _input_scale_rows(entry: PlanEntry) -> int:
    """An expert bank holds one input scale per expert (docs/format.md)."""
    return entry.kernel_shape[0] if entry.is_bank and entry.holds_input_scale else 1


def _matrix_variable_attrs(layer, entries: list[PlanEntry]) -> list[str]:
    """Attributes of the float matrices to drop: an expert bank's planned
    matrices (its biases stay), otherwise every variable but the bias."""
    if getattr(layer, "hubquant_bank_shapes", None):
        return [e.matrix for e in entries]
    return [
        name
        for name, value in list(vars(layer).items())
        if isinstance(value, keras.Variable) and name != "bias"
    ]
