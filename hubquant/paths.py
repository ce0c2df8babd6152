"""Attribute paths read from files (recipes, saved Plans), walked safely.

``transformer_layers.0.attention.query_dense`` is walked one part at a time. A
part is a list index in range or an attribute name without a double underscore,
and every step must land on a Keras layer or a list of them: a path can reach
only layers, never ``__class__``, ``_tracker``, ``dtype_policy`` or a number.
"""

from __future__ import annotations

import keras
from keras_hub.models import Task

from hubquant.errors import ArtefactError


def child(obj, part: str):
    """One step of a path: a layer, a list of layers, or None."""
    if part.isdigit():
        ok = isinstance(obj, (list, tuple)) and int(part) < len(obj)
        return obj[int(part)] if ok else None
    if not part.isidentifier() or "__" in part or not isinstance(obj, keras.layers.Layer):
        return None
    value = getattr(obj, part, None)
    if isinstance(value, keras.layers.Layer) or _is_layer_list(value):
        return value
    return None


def walk(owner, dotted: str) -> keras.layers.Layer | None:
    """The layer at ``dotted`` from ``owner``, or None if the path reaches no layer."""
    obj = owner
    for part in dotted.split("."):
        obj = child(obj, part)
        if obj is None:
            return None
    return obj if isinstance(obj, keras.layers.Layer) else None


def layer_list(owner, name: str) -> list | None:
    """The list of layers at attribute ``name`` (a backbone's blocks), or None."""
    value = child(owner, name)
    return list(value) if _is_layer_list(value) else None


def _is_layer_list(value) -> bool:
    return isinstance(value, (list, tuple)) and all(
        isinstance(v, keras.layers.Layer) for v in value
    )


def variable_of(layer, name: str):
    """The weight variable at attribute ``name`` of ``layer`` (an expert bank's
    matrix), or None."""
    if not name.isidentifier() or "__" in name:
        return None
    value = getattr(layer, name, None)
    return value if isinstance(value, keras.Variable) else None


def backbone_of(model):
    """The backbone of a KerasHub task, or ``model`` itself when it is one."""
    return model.backbone if isinstance(model, Task) else model


def layer_at(backbone, attr: str):
    """The layer at a Plan entry's attribute path from the backbone."""
    layer = walk(backbone, attr)
    if layer is None:
        raise ArtefactError(
            f"the Plan names layer '{attr}', which is not a layer of {type(backbone).__name__}."
        )
    return layer
