"""What every hubquant layer shares: quantized matrices and their variables.

A layer holds one or more *matrices* (a Dense kernel, an embedding table, an
untied LM head). Each is quantized in hubquant's canonical ``[N, K]``
orientation (output channels by reduction length) and held as three variables:
``<name>_codes`` (int8, or int4 packed two per byte along K), ``<name>_scale``
(float32 multipliers) and, for asymmetric int4, ``<name>_zero`` (int8).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace

import keras
import numpy as np
from keras import ops
from keras.dtype_policies import DTypePolicyMap, QuantizedDTypePolicy

from hubquant import quantizers
from hubquant.errors import WeightsError
from hubquant.keras_internals import float_policy_name, forget_variable, place, unlocked
from hubquant.layers import products, sharding

MODES = ("int8", "int4")
_FLOAT_VIEWS = frozenset({"kernel", "embeddings"})


@dataclass(frozen=True)
class MatrixSpec:
    """How one matrix is quantized, and its canonical shape."""

    mode: str
    group_size: int
    symmetric: bool
    n: int = 0
    k: int = 0
    # AWQ: a float32 [K] multiplier applied to the inputs (folded into the
    # dequantized matrix): w ~ (q - zero) * scale * input_scale[k].
    input_scale: bool = False
    # An expert bank keeps one input scale per expert: [input_scale_rows, K],
    # each row applying to its N / input_scale_rows consecutive output rows.
    input_scale_rows: int = 1
    # int4: search each group's clipping range (False: its own min and max).
    clip: bool = True

    @property
    def groups(self) -> int:
        return quantizers.num_groups(self.k, self.group_size)

    @property
    def has_zero(self) -> bool:
        return self.mode == "int4" and not self.symmetric

    def variable_shapes(self) -> dict[str, tuple[tuple[int, ...], str]]:
        """Variable suffix -> (shape, dtype), in the fixed saving order."""
        if self.mode == "int8":
            return self._with_input_scale(
                {"codes": ((self.n, self.k), "int8"), "scale": ((self.n,), "float32")}
            )
        shapes = {
            "codes": ((self.n, -(-self.k // 2)), "int8"),
            "scale": ((self.n, self.groups), "float32"),
        }
        if self.has_zero:
            shapes["zero"] = ((self.n, self.groups), "int8")
        return self._with_input_scale(shapes)

    def _with_input_scale(self, shapes: dict) -> dict:
        if self.input_scale:
            rows = self.input_scale_rows
            shapes["input_scale"] = ((self.k,) if rows == 1 else (rows, self.k), "float32")
        return shapes


@dataclass(frozen=True)
class FloatMatrix:
    """Where a float matrix lives in a layer and how it maps to ``[N, K]``.

    ``to_matrix`` turns the float value as stored (Keras layout) into the
    float32 ``[N, K]`` matrix. For a 2-D value, ``row_axis`` is the stored
    axis that indexes ``N``, so a large value can be read a block of rows at
    a time. ``to_columns``, where given, turns it into ``quantizers.Columns``
    (the matrix laid out ``[K, N]``, as a kernel is stored): int4 quantizes
    that without a transposed float32 copy.
    """

    attr: str
    to_matrix: Callable[[object], np.ndarray]
    row_axis: int | None = None
    to_columns: Callable[[object], object] | None = None

    def read(self, value):
        """What a quantizer reads from ``value``: ``Columns`` where this takes
        them, else the ``[N, K]`` matrix."""
        return self.to_matrix(value) if self.to_columns is None else self.to_columns(value)

    def for_mode(self, mode: str) -> FloatMatrix:
        """Only int4 quantizes ``Columns``; other modes read ``[N, K]`` rows."""
        return self if mode == "int4" else replace(self, to_columns=None)


class QuantizedLayerMixin:
    """Hook plumbing shared by hubquant's Dense, EinsumDense and embeddings.

    Subclasses define ``_float_matrices()``: matrix name -> ``FloatMatrix``.
    """

    hubquant_specs: dict  # matrix name -> MatrixSpec, set before quantize/build

    def __init__(self, *args, hubquant=None, hubquant_source_dtype=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.hubquant_specs = specs_from_config(hubquant)
        self.hubquant_source_dtype = hubquant_source_dtype

    def __dir__(self):
        # Keras' saving walk reads every attribute ``dir()`` lists; the float
        # views (``kernel``, ``embeddings``) would each dequantize a matrix.
        return [name for name in super().__dir__() if name not in _FLOAT_VIEWS]

    def get_config(self):
        config = super().get_config()
        config["hubquant"] = self._spec_config()
        config["hubquant_source_dtype"] = self.hubquant_source_dtype
        return config

    # -- quantize ---------------------------------------------------------
    def quantize(self, mode=None, type_check=True, config=None, **kwargs):
        """Quantize every matrix with a spec; ``mode`` must match the specs."""
        if mode not in MODES:
            raise NotImplementedError(
                f"{type(self).__name__} supports modes {MODES}. Received: mode={mode!r}"
            )
        values = kwargs.pop("values", None) or {}
        if getattr(self, "_is_quantized", False):
            raise ValueError(f"Layer '{self.path}' is already quantized.")
        with unlocked(self):
            floats = self._float_matrices()
            for name, spec in list(self.hubquant_specs.items()):
                fm = floats[name]
                matrix = values.get(name)
                if matrix is None:
                    matrix = fm.for_mode(spec.mode).read(getattr(self, fm.attr))
                    matrix = _quantize(matrix, spec, self.path)
                input_scale = values.get(f"{name}_input_scale")
                spec = _with_input_scale(spec, input_scale)
                self.hubquant_specs[name] = spec
                self._drop_variable(fm.attr)
                self._build_matrix(name, spec, matrix, input_scale)
            self._is_quantized = True
        self._set_quantized_policy(mode)

    def _set_quantized_policy(self, mode: str) -> None:
        source = getattr(self, "hubquant_source_dtype", None) or self.dtype_policy.name
        self.dtype_policy = QuantizedDTypePolicy(mode, source)

    def quantized_build(self, shape, mode, config=None):
        """Allocate quantized variables directly (loading never holds floats)."""
        for name, spec in self.hubquant_specs.items():
            self._build_matrix(name, spec)
        self._is_quantized = True

    def _int8_build(self, shape, config=None):
        self.quantized_build(shape, "int8", config)

    def _int4_build(self, shape, config=None):
        self.quantized_build(shape, "int4", config)

    # -- variables ----------------------------------------------------------
    def _build_matrix(
        self,
        name: str,
        spec: MatrixSpec,
        matrix: quantizers.QuantizedMatrix | None = None,
        input_scale=None,
    ) -> None:
        """Create a matrix's variables, holding ``matrix`` (or zeros until loaded)."""
        values = (
            {}
            if matrix is None
            else {"codes": matrix.codes, "scale": matrix.scale, "zero": matrix.zero}
        )
        if input_scale is not None:
            values["input_scale"] = np.asarray(input_scale, np.float32)
        layouts = sharding.matrix_layouts(self, name, spec)
        with sharding.laid_out(self, layouts):
            for suffix, (shape, dtype) in spec.variable_shapes().items():
                value = values.get(suffix)
                placed = layouts is not None and value is not None
                var = self.add_weight(
                    name=f"{name}_{suffix}",
                    shape=shape,
                    dtype=dtype,
                    initializer="zeros" if value is None or placed else _Given(value),
                    trainable=False,
                )
                if placed:  # each device receives its shard, not the whole value
                    place(var, value)
                setattr(self, f"{name}_{suffix}", var)

    def _drop_variable(self, attr: str) -> None:
        """Forget a variable without Keras' per-call garbage collection."""
        var = getattr(self, attr, None)
        if var is not None:
            forget_variable(self, var)
            object.__delattr__(self, attr)

    def quantized_variables(self) -> list:
        """All variables in the fixed saving order: matrices, then the rest."""
        ordered = [
            getattr(self, f"{name}_{suffix}")
            for name, spec in self.hubquant_specs.items()
            for suffix in spec.variable_shapes()
        ]
        ids = {id(v) for v in ordered}
        return ordered + [v for v in self._own_float_variables() if id(v) not in ids]

    def _build_float_matrices(self, dtype: str) -> None:
        """Re-create float matrices the Plan leaves alone (skeleton builds)."""

    def _own_float_variables(self) -> list:
        return [v for v in self.variables if "float" in str(v.dtype)]

    def save_own_variables(self, store):
        if not getattr(self, "_is_quantized", False):
            return super().save_own_variables(store)
        for i, var in enumerate(self.quantized_variables()):
            store[str(i)] = var

    # -- streaming ------------------------------------------------------------
    def stream_from_float(self, mode, read, done=None, float_class: str = "") -> None:
        """Quantize while loading: the next ``load_own_variables`` gets the
        float layer's store, and each planned matrix goes straight from
        ``read(store, key, FloatMatrix)`` to its quantized variables; then
        ``done()`` is called.

        ``mode`` None: keep what ``read`` returns for each planned matrix (a
        way to read it later, ``stream.FloatLater``) in ``hubquant_later`` and
        leave the layer float and its matrices unread (calibration reads them
        when their block runs).

        Keras names a layer held in a list after its class, so until then the
        layer answers to its float class name ``float_class``.
        """
        order: dict = {}
        super().save_own_variables(order)  # the float layer's keys, no values read
        self._hubquant_stream = (mode, order, read, done, type(self))
        if float_class and float_class != type(self).__name__:
            self.__class__ = _named(type(self), float_class)

    def _load_streamed(self, store) -> None:
        mode, order, read, done, cls = self._hubquant_stream
        if len(store.keys()) != len(order):  # Keras tries other paths first
            raise ValueError(
                f"Layer '{self.path}' expects {len(order)} float variables, "
                f"but the file holds {len(store.keys())}."
            )
        floats = self._float_matrices()
        planned = {id(getattr(self, floats[n].attr)): n for n in self.hubquant_specs}
        values = {}
        for key, var in order.items():
            name = planned.get(id(var))
            if name is None:
                var.assign(store[key])
            elif mode is None:
                values[name] = read(store, key, floats[name])
            else:
                spec = self.hubquant_specs[name]
                rows = read(store, key, floats[name].for_mode(spec.mode))
                if tuple(rows.shape) != (spec.n, spec.k):
                    self.hubquant_misfit = (
                        f"layer '{self.path}': the weights file holds its {name} as "
                        f"{list(rows.shape)} ([out, in]); the config makes it "
                        f"{[spec.n, spec.k]}."
                    )
                    raise ValueError(self.hubquant_misfit)
                values[name] = _quantize(rows, spec, self.path)
        self.__class__ = cls
        if mode is None:
            self.hubquant_later = values
        else:
            self.quantize(mode, values=values)
        del self._hubquant_stream
        if done is not None:
            done()

    def load_own_variables(self, store):
        if "_hubquant_stream" in self.__dict__:
            return self._load_streamed(store)
        if not getattr(self, "_is_quantized", False):
            return super().load_own_variables(store)
        variables = self.quantized_variables()
        if len(store.keys()) != len(variables):
            names = ", ".join(v.name for v in variables)
            raise ValueError(
                f"Layer '{self.path}' ({type(self).__name__}, {self.quantization_mode}) "
                f"expects {len(variables)} variables ({names}), "
                f"but the file holds {len(store.keys())}."
            )
        for i, var in enumerate(variables):
            value = store[str(i)]
            if tuple(value.shape) != tuple(var.shape):
                raise ValueError(
                    f"Layer '{self.path}' variable '{var.name}' expects shape "
                    f"{tuple(var.shape)}. Received: shape={tuple(value.shape)}"
                )
            var.assign(value)

    # -- forward helpers ------------------------------------------------------
    def _dequantized(self, name: str, dtype, rows=None) -> object:
        """The ``[N, K]`` matrix (or only ``rows`` of it) rebuilt in ``dtype``."""
        spec = self.hubquant_specs[name]
        parts = self._matrix_parts(name)
        if rows is not None:
            parts = [ops.take(p, rows, axis=0) for p in parts]
        w = self._dequantized_f32(spec, parts)
        if spec.input_scale and spec.input_scale_rows > 1:  # one row per expert
            experts = spec.input_scale_rows
            w = ops.reshape(w, (experts, -1, spec.k)) * parts[-1][:, None, :]
            w = ops.reshape(w, (spec.n, spec.k))
        elif spec.input_scale:
            w = w * parts[-1][None, :]
        return ops.cast(w, dtype)

    def _matrix_parts(self, name: str) -> list:
        """A matrix's variables: codes, scale, then zero and input_scale if held."""
        spec = self.hubquant_specs[name]
        return [getattr(self, f"{name}_{s}") for s in spec.variable_shapes()]

    def _row_product(self, name: str, inputs, row_map):
        """``inputs`` times matrix ``name`` read in canonical layout (few rows),
        laid out by ``row_map``; None where the dequantizing path applies."""
        spec = self.hubquant_specs[name]
        if row_map is None or products.product_for(row_map.row_count(inputs), spec) is None:
            return None
        rows, kept = row_map.rows(ops.cast(inputs, "float32"))
        y = products.row_product(rows, self._matrix_parts(name), spec)
        return row_map.restore(y, kept)

    @staticmethod
    def _dequantized_f32(spec: MatrixSpec, parts: list):
        codes, scale = parts[0], parts[1]
        if spec.mode == "int8":
            return products.int8_matrix(codes, scale)
        return products.int4_matrix(parts, spec)[:, : spec.k]

    def _spec_config(self) -> dict:
        """Specs as saved; the input scale fields only where set (older configs
        lack them)."""
        return {
            name: {k: v for k, v in asdict(spec).items() if _DEFAULTS.get(k, object()) != v}
            for name, spec in self.hubquant_specs.items()
        }


@functools.cache
def _named(cls: type, name: str) -> type:
    """``cls`` under another class name (for the paths Keras derives from it)."""
    return type(name, (cls,), {"__module__": cls.__module__})


_DEFAULTS = {"input_scale": False, "input_scale_rows": 1, "clip": True}


def _with_input_scale(spec: MatrixSpec, input_scale) -> MatrixSpec:
    if input_scale is None:
        return replace(spec, input_scale=False, input_scale_rows=1)
    rows = 1 if np.ndim(input_scale) == 1 else int(np.shape(input_scale)[0])
    return replace(spec, input_scale=True, input_scale_rows=rows)


def specs_from_config(config: dict | None) -> dict:
    return {name: MatrixSpec(**spec) for name, spec in (config or {}).items()}


def source_dtype_of(layer) -> str:
    """The float policy name a layer computes in (maps resolved by path)."""
    policy = layer.dtype_policy
    if isinstance(policy, DTypePolicyMap):
        policy = policy[layer.path]
    return float_policy_name(policy)


def _quantize(matrix, spec: MatrixSpec, path: str) -> quantizers.QuantizedMatrix:
    try:
        return quantizers.quantize(matrix, spec.mode, spec.group_size, spec.symmetric, spec.clip)
    except quantizers.NonFiniteWeights as e:
        raise WeightsError(
            f"layer '{path}': its weights hold a non-finite value ({e}); hubquant does not "
            "quantize NaN or Inf. Fix the checkpoint (or zero those weights) first."
        ) from None


class _Given:
    """An initializer that hands over values already computed."""

    def __init__(self, value):
        self.value = value

    def __call__(self, shape, dtype=None):
        if keras.config.backend() != "jax":
            return self.value
        # Hand Keras a JAX array: its conversion of NumPy compiles a copy program
        # per shape and dtype (0.15 s of a 1.2 s int4 quantize).
        import jax

        return jax.device_put(np.asarray(self.value, dtype))
