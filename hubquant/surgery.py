"""Turn planned layers into hubquant layers, quantize them, or rebuild them.

A planned layer keeps its identity: hubquant changes its class in place to the
matching hubquant subclass. Its path, its variables (so the float weights are
carried across exactly), its place in the functional graph and every attribute
that refers to it stay as they were. Quantizing then goes through the layer's
own ``quantize()`` hook.
"""

from __future__ import annotations

import math

import keras
from keras.dtype_policies import QuantizedDTypePolicy

from hubquant import quantizers
from hubquant.errors import ArtefactError
from hubquant.keras_internals import unlocked
from hubquant.layers import MatrixSpec
from hubquant.layers.registry import class_for, known_class, matrix_shape
from hubquant.paths import layer_at, variable_of
from hubquant.plan import Plan, PlanEntry


def swap_layers(backbone, plan: Plan) -> None:
    """Give every planned layer its hubquant class and specs; outputs unchanged."""
    for attr, entries in plan.layers().items():
        _adopt(layer_at(backbone, attr), entries)


def quantize_layers(backbone, plan: Plan, on_layer=None) -> None:
    """Run each swapped layer's ``quantize()`` hook as the Plan says."""
    compile_ahead(plan)
    for attr, entries in plan.layers().items():
        layer = layer_at(backbone, attr)
        layer.quantize(entries[0].mode)
        if on_layer is not None:
            on_layer(entries)


def compile_ahead(plan: Plan) -> None:
    """Start compiling the int4 programs the Plan's round-to-nearest kernels
    will run (``quantizers.compile_ahead``)."""
    quantizers.compile_ahead(
        (e.shape[1], e.group_size, e.source_dtype, e.symmetric, e.clip)
        for e in plan.quantized
        if e.mode == "int4" and e.algorithm == "rtn" and e.matrix == "kernel"
    )


def build_skeleton(backbone, plan: Plan) -> None:
    """Re-create planned layers directly in quantized form, before weights load."""
    check_plan_fits(backbone, plan)
    for attr, entries in plan.layers().items():
        layer = layer_at(backbone, attr)
        _adopt(layer, entries)
        with unlocked(layer):
            for name in _matrix_variable_attrs(layer, entries):
                layer._drop_variable(name)
            layer.quantized_build(None, entries[0].mode)
            layer._build_float_matrices(entries[0].source_dtype)
        layer._is_quantized = True
        layer.dtype_policy = QuantizedDTypePolicy(entries[0].mode, entries[0].source_dtype)


def check_plan_fits(backbone, plan: Plan) -> None:
    """Every entry of a saved Plan names a layer of ``backbone``, a hubquant layer
    class, and the shapes that layer's float matrices have: checked before any
    variable is allocated (a Plan in a shared file may have been edited)."""
    for attr, entries in plan.layers().items():
        layer = layer_at(backbone, attr)
        for e in entries:
            problem = _misfit(layer, e)
            if problem:
                raise ArtefactError(f"the Plan's entry for '{e.path}' ({e.role}) {problem}.")


def _misfit(layer, e: PlanEntry) -> str | None:
    bank = e.matrix not in ("kernel", "embeddings", "reverse")
    if bank and variable_of(layer, e.matrix) is None:
        return f"names matrix {e.matrix!r}, which {type(layer).__name__} does not hold"
    if not known_class(e.layer, layer, bank):
        return f"names layer class {e.layer!r}, which hubquant does not use for it"
    n, k = e.shape
    if math.prod(e.kernel_shape) != n * k:
        return f"says shape {list(e.shape)} but variable shape {list(e.kernel_shape)}"
    if e.matrix == "kernel":  # Keras built it from the config, int4 packed two per byte
        held = math.prod(layer._kernel.shape)
        packed = layer.quantization_mode == "int4"
        if not (held <= n * k <= 2 * held if packed else n * k == held):
            return (
                f"says shape {list(e.shape)}; the layer built from the saved config "
                f"holds {held} values"
            )
        return None
    actual = matrix_shape(layer, e.matrix)
    if tuple(e.shape) != actual:
        return (
            f"says shape {list(e.shape)}; the model built from the saved config has {list(actual)}"
        )
    return None


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
            clip=e.clip,
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
