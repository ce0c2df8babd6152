"""Which hubquant layer replaces which Keras layer, and matrix shapes."""

from __future__ import annotations

import keras
from keras.layers import ReversibleEmbedding

from hubquant.errors import RecipeError
from hubquant.layers.dense import QuantDense, QuantEinsumDense
from hubquant.layers.embedding import QuantEmbedding, QuantReversibleEmbedding
from hubquant.layers.experts import experts_class
from hubquant.layers.layout import KernelLayout

# Most specific first: a ReversibleEmbedding is also an Embedding.
REPLACEMENTS = (
    (ReversibleEmbedding, QuantReversibleEmbedding),
    (keras.layers.Embedding, QuantEmbedding),
    (keras.layers.EinsumDense, QuantEinsumDense),
    (keras.layers.Dense, QuantDense),
)
LAYERS = {cls.__name__: cls for _, cls in REPLACEMENTS}


def replacement_for(layer, spec, recipe) -> type:
    """The hubquant class for ``layer``: the recipe's choice or by Keras class."""
    if spec.matrices:
        return _experts_replacement(layer, spec, recipe)
    base = next((cls for src, cls in REPLACEMENTS if isinstance(layer, src)), None)
    if spec.layer is not None:
        chosen = LAYERS[spec.layer]
        if (
            base is None
            or not issubclass(chosen, _keras_base(chosen))
            or not isinstance(layer, _keras_base(chosen))
        ):
            raise RecipeError(
                f"recipe '{recipe.name}': role '{spec.role}' asks for layer "
                f"{spec.layer}, which cannot replace {type(layer).__name__} at "
                f"'{layer.path}'."
            )
        return chosen
    if base is None:
        raise RecipeError(
            f"recipe '{recipe.name}': role '{spec.role}' points at "
            f"{type(layer).__name__} ('{layer.path}'); hubquant can replace "
            f"{', '.join(src.__name__ for src, _ in REPLACEMENTS)}."
        )
    if spec.part == "reverse" and base is not QuantReversibleEmbedding:
        raise RecipeError(
            f"recipe '{recipe.name}': role '{spec.role}' has part: reverse, but "
            f"'{layer.path}' is a {type(layer).__name__}, not a ReversibleEmbedding."
        )
    return base


def _experts_replacement(layer, spec, recipe) -> type:
    for name in spec.matrices:
        var = getattr(layer, name, None)
        if var is None or len(var.shape) != 3:
            raise RecipeError(
                f"recipe '{recipe.name}': role '{spec.role}': '{layer.path}' has no "
                f"[experts, in, out] weight '{name}'. Received: "
                f"{None if var is None else tuple(var.shape)}"
            )
    return experts_class(type(layer))


def class_for(name: str, layer) -> type:
    """A hubquant layer class by name; expert banks get one per source class."""
    if name in LAYERS:
        return LAYERS[name]
    if type(layer).__name__ == name:
        return type(layer)
    return experts_class(type(layer))


def known_class(name: str, layer, bank: bool) -> bool:
    """``name`` is the hubquant layer class ``class_for`` gives ``layer`` (``bank``:
    the entry is an expert bank's matrix)."""
    if bank:
        return name == experts_class(type(layer)).__name__
    return name in LAYERS and isinstance(layer, _keras_base(LAYERS[name]))


def _keras_base(cls: type) -> type:
    return next(src for src, dst in REPLACEMENTS if dst is cls)


def layout_of(layer) -> KernelLayout:
    shape = tuple(layer._kernel.shape)
    if isinstance(layer, keras.layers.EinsumDense):
        return KernelLayout.einsum(layer.equation, shape)
    return KernelLayout.dense(shape)


def matrix_shape(layer, matrix: str) -> tuple[int, int]:
    """Canonical ``[N, K]`` shape of one of a layer's float matrices."""
    if matrix not in ("kernel", "embeddings", "reverse"):  # an expert bank
        experts, k, n = getattr(layer, matrix).shape
        return experts * n, k
    if matrix == "kernel":
        layout = layout_of(layer)
        return layout.n, layout.k
    return layer.input_dim, layer.output_dim


def variable_shape(layer, matrix: str) -> tuple[int, ...]:
    """Shape of a matrix's float variable in Keras layout."""
    if matrix not in ("kernel", "embeddings", "reverse"):
        return tuple(getattr(layer, matrix).shape)
    if matrix == "kernel":
        return tuple(layer._kernel.shape)
    if matrix == "reverse":
        return (layer.output_dim, layer.input_dim)
    return (layer.input_dim, layer.output_dim)
