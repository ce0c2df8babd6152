"""Quantized variables laid out like the float matrix they replace, under an
active ``keras.distribution`` (a ``ModelParallel`` with a family's
``get_layout_map``, or a user's own ``LayoutMap``).

The float kernel's layout says which mesh axis shards which kernel axis. The
canonical matrix ``[N, K]`` flattens the output axes into ``N`` and the
reduction axes into ``K`` (``layout.py``); a flattened axis keeps the mesh
axis of its first kernel axis larger than 1, which is exactly the same split
of the data. Then:

- codes ``[N, K]`` (int4: ``[N, K / 2]``, packed along ``K``) take ``(N's, K's)``;
- scales and zero points (``[N]`` or ``[N, groups]``) take ``N``'s, and ``K``'s
  along the groups;
- an AWQ input scale (``[K]``) takes ``K``'s.

Fallbacks, each replicating that one axis: a mesh axis on a later kernel axis
(its rows would interleave in the flattened matrix), and a dimension the mesh
axis does not divide evenly (an odd packed ``K / 2``, a few groups). An
expert bank ``[experts, in, out]`` flattens experts and out into ``N``, so a
layout that splits the experts splits its codes by whole experts.
"""

from __future__ import annotations

import contextlib
import math
from types import SimpleNamespace

import keras
import numpy as np
from keras import ops

from hubquant import keras_internals as internals


def matrix_layouts(layer, name: str, spec) -> dict | None:
    """``{variable name: TensorLayout}`` for matrix ``name``'s variables, or None
    when no distribution is active."""
    distribution = keras.distribution.distribution()
    if distribution is None:
        return None
    var_name, shape, output_axes, reduce_axes = layer.float_axes(name)
    axes = _float_axes(layer, distribution, var_name, shape)
    if axes is None:
        return None
    mesh = distribution.device_mesh
    n_axis = _flat_axis(axes, shape, output_axes)
    k_axis = _flat_axis(axes, shape, reduce_axes)
    layouts = {}
    for suffix, (var_shape, _) in spec.variable_shapes().items():
        if suffix == "input_scale":
            roles = (k_axis,) if len(var_shape) == 1 else (None, k_axis)
        else:
            roles = (n_axis, k_axis)[: len(var_shape)]
        fitted = tuple(
            a if _divides(mesh, a, d) else None for a, d in zip(roles, var_shape, strict=True)
        )
        layouts[f"{name}_{suffix}"] = keras.distribution.TensorLayout(fitted, mesh)
    return layouts


@contextlib.contextmanager
def laid_out(layer, layouts: dict | None):
    """While active, variables the layer creates under ``{name: layout}``'s
    names take those layouts (the rest as the distribution says)."""
    if layouts is None:
        yield
        return
    distribution = keras.distribution.distribution()
    by_path = {f"{layer.path}/{name}": layout for name, layout in layouts.items()}
    keras.distribution.set_distribution(_Overlay(distribution, by_path))
    try:
        yield
    finally:
        keras.distribution.set_distribution(distribution)


class _Overlay:
    """The active distribution, with given layouts for some variable paths."""

    def __init__(self, distribution, by_path: dict):
        self._distribution, self._by_path = distribution, by_path

    def get_variable_layout(self, variable):
        layout = self._by_path.get(variable.path)
        return layout if layout is not None else self._distribution.get_variable_layout(variable)

    def __getattr__(self, name):
        return getattr(self._distribution, name)


def _float_axes(layer, distribution, var_name: str, shape: tuple) -> tuple | None:
    """The float variable's layout axes: its own where it still exists (or was
    replaced in place), else what the distribution gives a variable of that
    path and shape."""
    existing = [v for v in layer.weights if v.path == f"{layer.path}/{var_name}"]
    layout = internals.variable_layout(existing[0]) if existing else None
    if layout is None:
        stand_in = SimpleNamespace(path=f"{layer.path}/{var_name}", shape=shape, _layout=None)
        layout = distribution.get_variable_layout(stand_in)
    axes = getattr(layout, "axes", None)
    return None if axes is None or len(axes) != len(shape) else tuple(axes)


def _flat_axis(axes: tuple, shape: tuple, kernel_axes: tuple):
    """The mesh axis of the flattened ``kernel_axes``: that of the first one
    larger than 1 (None if it is not sharded)."""
    for i in kernel_axes:
        if shape[i] > 1:
            return axes[i]
    return None


def _divides(mesh, axis, size: int) -> bool:
    if axis is None:
        return True
    names = axis if isinstance(axis, tuple) else (axis,)
    count = math.prod(mesh.shape[mesh.axis_names.index(n)] for n in names)
    return size % count == 0


def to_host(value) -> np.ndarray:
    """A variable's or tensor's value as NumPy on this host; one spanning other
    processes' devices is gathered (a collective: every process calls it in
    the same order)."""
    value = getattr(value, "value", value)  # a Keras variable's array
    if keras.backend.backend() == "jax" and not _addressable(value):
        from jax.experimental import multihost_utils

        return np.asarray(multihost_utils.process_allgather(value, tiled=True))
    return ops.convert_to_numpy(value)


def host_view(value) -> np.ndarray:
    """``to_host`` for reading only: on one JAX CPU device, a read-only NumPy
    view of the array itself instead of a copy."""
    array = getattr(value, "value", value)
    if keras.backend.backend() == "jax" and _addressable(array) and hasattr(array, "devices"):
        if all(d.platform == "cpu" for d in array.devices()):
            return np.asarray(array)
    return to_host(value)


def _addressable(value) -> bool:
    return getattr(value, "is_fully_addressable", True)


@contextlib.contextmanager
def on_host(model):
    """While active, every variable of ``model`` that spans other processes'
    devices holds its whole value as NumPy on this host, so writers read it as
    on one device (the files each process would write are the same)."""
    swapped = [v for v in model.weights if not _addressable(v.value)]
    with contextlib.ExitStack() as stack:
        for variable in swapped:
            stack.enter_context(internals.value_swapped(variable, to_host(variable)))
        yield


def is_writer() -> bool:
    """False in every process but the first of a multi-process run: one writes."""
    if keras.backend.backend() != "jax":
        return True
    import jax

    return jax.process_index() == 0


def rows_split(array):
    """``array`` (NumPy, rows first) split by rows over every device of the
    active distribution's mesh (row-independent work such as GPTQ's sweep then
    runs on each device's rows); as it is without a distribution or when the
    rows do not divide evenly."""
    return _split_first_axis(array, lambda d: tuple(d.device_mesh.axis_names))


def data_split(array):
    """A batch of calibration inputs split along the distribution's data axis
    (``batch_dim_name``), as ``fit`` would split it; as it is otherwise."""

    def batch_axis(distribution):
        name = getattr(distribution, "batch_dim_name", None)
        return name if name in distribution.device_mesh.axis_names else None

    return _split_first_axis(array, batch_axis)


def _split_first_axis(array, axis_of):
    """``array`` split along its first axis by the mesh axis ``axis_of(distribution)``."""
    distribution = keras.distribution.distribution()
    if distribution is None or keras.backend.backend() != "jax":
        return array
    mesh = distribution.device_mesh
    axis = axis_of(distribution)
    if axis is None or not _divides(mesh, axis, array.shape[0]):
        return array
    import jax

    spec = jax.sharding.PartitionSpec(axis, *([None] * (array.ndim - 1)))
    sharding = jax.sharding.NamedSharding(mesh.backend_mesh, spec)
    if sharding.is_fully_addressable:
        return jax.device_put(array, sharding)
    return jax.make_array_from_callback(array.shape, sharding, lambda index: array[index])
