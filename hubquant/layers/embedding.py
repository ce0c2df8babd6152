"""hubquant's replacements for Keras ``Embedding`` and KerasHub's ``ReversibleEmbedding``.

The token table ``[vocab, hidden]`` is already in canonical ``[N, K]`` form:
one scale per row (int8) or per group of a row (int4). Lookups gather the
codes of the requested rows and dequantize only those. An untied LM head
(``reverse_embeddings``, ``[hidden, vocab]``) is a second matrix, ``reverse``.
"""

from __future__ import annotations

import keras
import numpy as np
from keras import ops
from keras.layers import ReversibleEmbedding

from hubquant.errors import HubquantError
from hubquant.layers import products, sharding
from hubquant.layers.base import FloatMatrix, QuantizedLayerMixin


class _QuantTable(QuantizedLayerMixin):
    def _float_matrices(self):
        matrices = {"embeddings": FloatMatrix("_embeddings", _f32, 0)}
        if getattr(self, "reverse_embeddings", None) is not None:
            matrices["reverse"] = FloatMatrix("reverse_embeddings", _f32_transposed, 1)
        return matrices

    def float_axes(self, name: str):
        """The float table behind matrix ``name`` (``sharding.py``): the token
        table's rows are ``N``; the untied head is stored transposed."""
        if name == "embeddings":
            return "embeddings", (self.input_dim, self.output_dim), (0,), (1,)
        return "reverse_embeddings", (self.output_dim, self.input_dim), (1,), (0,)

    def _build_float_matrices(self, dtype: str) -> None:
        if "embeddings" not in self.hubquant_specs:
            self._embeddings = self.add_weight(
                shape=(self.input_dim, self.output_dim), name="embeddings", dtype=dtype
            )
        tied = getattr(self, "tie_weights", True)
        if not tied and "reverse" not in self.hubquant_specs:
            self.reverse_embeddings = self.add_weight(
                shape=(self.output_dim, self.input_dim),
                name="reverse_embeddings",
                dtype=dtype,
            )

    def enable_lora(self, *args, **kwargs):
        if getattr(self, "_is_quantized", False):
            raise HubquantError(
                f"layer '{self.path}': LoRA on a quantized token table is not supported "
                "(Keras would train a float [vocab, rank] table beside it); adapt the "
                "attention and MLP projections, or keep the table float (mode: none)."
            )
        return super().enable_lora(*args, **kwargs)

    @property
    def embeddings(self):
        if "embeddings" not in getattr(self, "hubquant_specs", {}) or not getattr(
            self, "_is_quantized", False
        ):
            return self._embeddings
        return self._dequantized("embeddings", self.compute_dtype)

    def float_weights(self) -> list:
        """``weights`` as the float layer had them (tables dequantized)."""
        out = [self.embeddings]
        if not getattr(self, "tie_weights", True):
            if "reverse" in self.hubquant_specs:
                out.append(ops.transpose(self._dequantized("reverse", self.compute_dtype)))
            else:
                out.append(self.reverse_embeddings)
        return out

    def _lookup(self, inputs):
        if inputs.dtype not in ("int32", "int64"):
            inputs = ops.cast(inputs, "int32")
        if "embeddings" not in self.hubquant_specs:
            return ops.cast(ops.take(self._embeddings, inputs, axis=0), self.compute_dtype)
        flat = ops.reshape(inputs, (-1,))
        rows = self._dequantized("embeddings", self.compute_dtype, rows=flat)
        return ops.reshape(rows, (*ops.shape(inputs), self.output_dim))


@keras.saving.register_keras_serializable(package="hubquant")
class QuantEmbedding(_QuantTable, keras.layers.Embedding):
    """``Embedding`` whose table can be held as int8 or packed int4."""

    def _quantized_forward(self, inputs):
        return self._lookup(inputs)

    _int8_call = _quantized_forward
    _int4_call = _quantized_forward


@keras.saving.register_keras_serializable(package="hubquant")
class QuantReversibleEmbedding(_QuantTable, ReversibleEmbedding):
    """Token table that is also the LM head; both read the quantized storage."""

    def _quantized_forward(self, inputs, reverse=False):
        if not reverse:
            return self._lookup(inputs)
        name = "embeddings" if self.tie_weights else "reverse"
        dtype = self.reverse_dtype or self.compute_dtype
        inputs = ops.cast(inputs, dtype)
        row_map = products.dense_row_map(len(inputs.shape), self.input_dim)
        few = None if name not in self.hubquant_specs else self._row_product(name, inputs, row_map)
        if few is not None:
            logits = ops.cast(few, dtype)
        elif name not in self.hubquant_specs:
            kernel = (
                self._embeddings if self.tie_weights else ops.transpose(self.reverse_embeddings)
            )
            logits = ops.matmul(inputs, ops.transpose(ops.cast(kernel, dtype)))
        elif self.hubquant_specs[name].mode == "int8":
            codes = ops.cast(getattr(self, f"{name}_codes"), dtype)
            logits = ops.matmul(inputs, ops.transpose(codes))
            logits = logits * ops.cast(getattr(self, f"{name}_scale"), dtype)
        else:
            logits = ops.matmul(inputs, ops.transpose(self._dequantized(name, dtype)))
        if self.logit_soft_cap is not None:
            cap = self.logit_soft_cap
            logits = ops.multiply(ops.tanh(ops.divide(logits, cap)), cap)
        return logits

    _int8_call = _quantized_forward
    _int4_call = _quantized_forward


def _f32(value) -> np.ndarray:
    return sharding.host_view(value).astype(np.float32, copy=False)  # read only


def _f32_transposed(value) -> np.ndarray:
    """``[hidden, vocab]`` head as ``[vocab, hidden]`` float32 (a view)."""
    return _f32(value).T
