"""Quantization-compatible replacement layers, by the Keras class they replace."""

from hubquant.layers.base import MatrixSpec, source_dtype_of
from hubquant.layers.dense import QuantDense, QuantEinsumDense
from hubquant.layers.embedding import QuantEmbedding, QuantReversibleEmbedding

__all__ = [
    "MatrixSpec",
    "QuantDense",
    "QuantEinsumDense",
    "QuantEmbedding",
    "QuantReversibleEmbedding",
    "source_dtype_of",
]
